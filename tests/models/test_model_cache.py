"""The per-process model cache: one load per identity, stale versions replaced, bounds per kind."""

from __future__ import annotations

import threading
import time

import pytest

from models.cache import ModelCache, ModelKey


class Loads:
    """A loader that counts its calls and returns a new object each time."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s

    def __call__(self) -> object:
        self.calls += 1
        time.sleep(self.delay_s)
        return object()


def test_the_same_key_loads_once_and_returns_the_same_object():
    cache, loads = ModelCache(), Loads()
    key = ModelKey("lrm", ("/w/a.ckpt", "cpu"), (1,))
    first = cache.get_or_load(key, loads)
    assert cache.get_or_load(key, loads) is first
    assert loads.calls == 1


def test_another_version_of_the_same_identity_replaces_the_stale_entry():
    cache, loads = ModelCache(), Loads()
    old = cache.get_or_load(ModelKey("lrm", ("/w/a.ckpt",), (1,)), loads)
    new = cache.get_or_load(ModelKey("lrm", ("/w/a.ckpt",), (2,)), loads)
    assert new is not old
    assert len(cache) == 1


def test_different_identities_are_kept_side_by_side_without_a_bound():
    cache, loads = ModelCache(), Loads()
    a = cache.get_or_load(ModelKey("lrm", ("a",)), loads)
    b = cache.get_or_load(ModelKey("lrm", ("b",)), loads)
    assert cache.get_or_load(ModelKey("lrm", ("a",)), loads) is a
    assert cache.get_or_load(ModelKey("lrm", ("b",)), loads) is b
    assert loads.calls == 2


def test_a_bound_drops_the_least_recently_used_entry_of_that_kind_only():
    cache, loads = ModelCache(), Loads()
    other = cache.get_or_load(ModelKey("text", ("minilm",)), loads)
    a = cache.get_or_load(ModelKey("flux", ("a",)), loads, max_entries=2)
    cache.get_or_load(ModelKey("flux", ("b",)), loads, max_entries=2)
    cache.get_or_load(ModelKey("flux", ("a",)), loads, max_entries=2)  # a is now the newest
    cache.get_or_load(ModelKey("flux", ("c",)), loads, max_entries=2)  # drops b
    assert cache.kinds() == {"text": 1, "flux": 2}
    assert cache.get_or_load(ModelKey("flux", ("a",)), loads, max_entries=2) is a
    assert cache.get_or_load(ModelKey("text", ("minilm",)), loads) is other


def test_the_bound_frees_room_before_the_new_model_loads():
    cache = ModelCache()
    cache.get_or_load(ModelKey("flux", ("a",)), object, max_entries=1)
    seen_while_loading: list[int] = []

    def loader() -> object:
        seen_while_loading.append(len(cache))
        return object()

    cache.get_or_load(ModelKey("flux", ("b",)), loader, max_entries=1)
    assert seen_while_loading == [0]


def test_a_failing_loader_caches_nothing():
    cache, loads = ModelCache(), Loads()

    def broken() -> object:
        raise FileNotFoundError("no weights")

    with pytest.raises(FileNotFoundError):
        cache.get_or_load(ModelKey("lrm", ("a",)), broken)
    cache.get_or_load(ModelKey("lrm", ("a",)), loads)
    assert loads.calls == 1


def test_clear_by_kind_keeps_the_other_kinds():
    cache, loads = ModelCache(), Loads()
    cache.get_or_load(ModelKey("lrm", ("a",)), loads)
    kept = cache.get_or_load(ModelKey("text", ("a",)), loads)
    cache.clear("lrm")
    assert cache.kinds() == {"text": 1}
    assert cache.get_or_load(ModelKey("text", ("a",)), loads) is kept
    cache.clear()
    assert len(cache) == 0


def test_threads_asking_for_one_key_together_share_one_load():
    cache, loads = ModelCache(), Loads(delay_s=0.05)
    key = ModelKey("flux", ("a",))
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_load(key, loads)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads.calls == 1
    assert all(r is results[0] for r in results)


def test_a_bound_below_one_is_refused():
    with pytest.raises(ValueError, match="max_entries must be at least 1, got 0"):
        ModelCache().get_or_load(ModelKey("lrm", ("a",)), object, max_entries=0)


def test_the_loaders_keep_their_models_in_the_process_cache():
    from models import cache
    from models.embed.text import CACHE_KIND, get_text_embedder

    first = get_text_embedder()
    assert cache.MODEL_CACHE.kinds().get(CACHE_KIND) == 1
    assert get_text_embedder() is first
    cache.clear(CACHE_KIND)
    assert get_text_embedder() is not first
