"""Values kept per bundle: reused for the same bundle, replaced for another, dropped with it,
and one last bundle per thread."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from models.bundle.memo import BundleMemo, decoded_views
from models.bundle.spec import Bundle, BundleSpec


def blank_bundle() -> Bundle:
    return Bundle(image=np.full((64, 128, 3), 255, dtype=np.uint8), spec=BundleSpec(tile=32))


def test_the_same_bundle_gets_the_values_kept_for_it():
    memo, bundle = BundleMemo(), blank_bundle()
    memo.values(bundle)["x"] = 1
    assert memo.values(bundle) == {"x": 1}


def test_another_bundle_replaces_the_kept_values():
    memo, first, second = BundleMemo(), blank_bundle(), blank_bundle()
    memo.values(first)["x"] = 1
    assert memo.values(second) == {}
    assert memo.values(first) == {}


def test_a_bundle_whose_image_was_replaced_counts_as_another():
    memo, bundle = BundleMemo(), blank_bundle()
    memo.values(bundle)["x"] = 1
    bundle.image = bundle.image.copy()
    assert memo.values(bundle) == {}


def test_the_values_go_when_their_bundle_is_collected():
    memo, bundle = BundleMemo(), blank_bundle()
    memo.values(bundle)["x"] = np.zeros(10)
    del bundle
    assert len(memo) == 0


def test_another_threads_bundle_leaves_this_threads_values_in_place():
    memo, mine, theirs = BundleMemo(), blank_bundle(), blank_bundle()
    memo.values(mine)["x"] = 1
    other = threading.Thread(target=lambda: memo.values(theirs).update(y=2))
    other.start()
    other.join()
    assert memo.values(mine) == {"x": 1}


def test_two_threads_asking_at_once_are_never_handed_each_others_values():
    # Two assets refined at once in a catalog's worker threads. Switching threads as often as
    # possible puts a switch between a shared slot's check and its read within a few thousand
    # calls.
    interval = sys.getswitchinterval()
    memo, wrong = BundleMemo(), []

    def ask(bundle: Bundle, tag: str) -> None:
        for _ in range(100_000):
            if memo.values(bundle).setdefault("tag", tag) != tag:
                wrong.append(tag)
                return

    threads = [threading.Thread(target=ask, args=(blank_bundle(), tag)) for tag in "ab"]
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == []


def test_decoded_views_are_decoded_once_per_bundle_and_read_only(monkeypatch):
    bundle = blank_bundle()
    calls = []
    original = Bundle.normals
    monkeypatch.setattr(Bundle, "normals", lambda self: calls.append(1) or original(self))
    normals, masks = decoded_views(bundle)
    assert decoded_views(bundle)[0] is normals
    assert len(calls) == 1
    assert normals.shape == (4, 32, 32, 3) and masks.shape == (4, 32, 32)
    with pytest.raises(ValueError, match="read-only"):
        normals[0, 0, 0, 0] = 1.0
