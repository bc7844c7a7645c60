"""Manifest parsing (intake/): formats, defaults, identity, confinement, URLs."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

import intake.readers as readers_module
from intake.items import ManifestItem
from intake.parse import parse_manifest

GOOD = Path(__file__).resolve().parents[1] / "data" / "good_manifests"


def _png(path: Path, size: tuple[int, int] = (8, 8), colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- formats


def test_the_three_formats_give_the_same_requests():
    parsed = {fmt: parse_manifest(GOOD / f"good.{fmt}") for fmt in ("yaml", "jsonl", "csv")}
    for result in parsed.values():
        assert result.ok, result.rejected
    canon = {fmt: [r.canonical() for r in res.requests] for fmt, res in parsed.items()}
    assert canon["yaml"] == canon["jsonl"] == canon["csv"]
    tags = {fmt: [r.tags for r in res.requests] for fmt, res in parsed.items()}
    assert tags["yaml"] == tags["jsonl"] == tags["csv"]


def test_line_numbers_are_physical_lines_in_each_format():
    lines = {
        fmt: [r.line for r in parse_manifest(GOOD / f"good.{fmt}").requests]
        for fmt in ("yaml", "jsonl", "csv")
    }
    assert lines["yaml"] == [7, 7, 10, 14]  # where each item starts
    assert lines["jsonl"] == [1, 1, 2, 4]  # the blank line 3 still counts
    assert lines["csv"] == [2, 2, 3, 4]  # the header is line 1


def test_csv_row_after_a_multiline_cell_keeps_its_physical_line(tmp_path):
    path = _write(
        tmp_path / "m.csv",
        'prompt,seed\n"a chair\nwith two lines",1\na table,-3\n',
    )
    parsed = parse_manifest(path)
    assert [r.line for r in parsed.requests] == [2]
    assert [(r.line, "seed" in r.reason) for r in parsed.rejected] == [(4, True)]


def test_yaml_rejection_keeps_the_items_text_even_with_non_ascii(tmp_path):
    text = "items:\n  - prompt: une chaise, café crème\n  - prompt: ok\n    x: 1\n"
    path = _write(tmp_path / "m.yaml", text)
    parsed = parse_manifest(path)
    assert parsed.requests[0].prompt == "une chaise, café crème"
    assert parsed.rejected[0].raw == "prompt: ok\n    x: 1"


def test_manifest_hash_is_the_hash_of_its_bytes(tmp_path):
    import hashlib

    path = _write(tmp_path / "m.jsonl", '{"prompt": "a chair"}\n')
    assert parse_manifest(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a chair"}).encode() + b"\n")
    assert [r.prompt for r in parse_manifest(path).requests] == ["a chair"]


def test_missing_manifest_is_one_rejection_at_line_zero(tmp_path):
    parsed = parse_manifest(tmp_path / "absent.yaml")
    assert [(r.line, r.reason) for r in parsed.rejected] == [(0, "manifest file not found")]


def test_oversized_manifest_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(readers_module, "MAX_MANIFEST_BYTES", 100)
    path = _write(tmp_path / "m.jsonl", '{"prompt": "a chair"}\n' * 10)
    parsed = parse_manifest(path)
    assert "more than the limit of 100" in parsed.rejected[0].reason
    assert parsed.requests == []


# libyaml (the C loader, PyYAML >= 6.0.4) has its own nesting limit and may trip before our
# depth check; the pure-Python loader leaves it to ours. Either way the message is ours.
@pytest.mark.parametrize("loader", ["CSafeLoader", "SafeLoader"])
def test_deeply_nested_yaml_is_refused_quickly(tmp_path, monkeypatch, loader):
    if not hasattr(readers_module.yaml, loader):
        pytest.skip(f"PyYAML built without {loader}")
    monkeypatch.setattr(readers_module, "_YAML_LOADER", getattr(readers_module.yaml, loader))
    path = _write(tmp_path / "m.yaml", "items:\n  - params: " + "[" * 5000 + "]" * 5000 + "\n")
    started = time.perf_counter()
    parsed = parse_manifest(path)
    assert time.perf_counter() - started < 2
    assert parsed.requests == []
    [rejection] = parsed.rejected
    assert rejection.line == 2
    depth = readers_module.MAX_YAML_DEPTH
    assert rejection.reason == f"YAML is nested more than {depth} levels deep"


def test_yaml_alias_bomb_is_refused_without_expanding(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
    text = "\n".join(levels) + "\nitems:\n  - prompt: bomb\n    tags: *a11\n  - prompt: fine\n"
    path = _write(tmp_path / "m.yaml", text)
    started = time.perf_counter()
    parsed = parse_manifest(path)
    assert time.perf_counter() - started < 2
    assert [r.prompt for r in parsed.requests] == ["fine"]
    assert any("anchors and aliases" in r.reason for r in parsed.rejected)


# --------------------------------------------------------------------------- item rules


def test_unknown_keys_are_forbidden_in_the_model():
    with pytest.raises(ValueError, match="colour"):
        ManifestItem.model_validate({"prompt": "x", "colour": "red"})


def test_variants_expand_to_consecutive_seeds_from_the_base_seed(tmp_path):
    path = _write(tmp_path / "m.jsonl", json.dumps({"prompt": "a cup", "seed": 10, "variants": 3}))
    requests = parse_manifest(path).requests
    assert [(r.seed, r.variant) for r in requests] == [(10, 0), (11, 1), (12, 2)]
    assert len({r.canonical_json() for r in requests}) == 3


def test_seed_zero_is_a_real_seed_not_a_missing_one(tmp_path):
    path = _write(tmp_path / "m.yaml", "defaults:\n  seed: 9\nitems:\n  - prompt: a\n    seed: 0\n")
    assert [r.seed for r in parse_manifest(path).requests] == [0]


def test_defaults_merge_params_and_tags_and_the_item_wins(tmp_path):
    text = (
        "defaults:\n  init: lrm\n  tags: [a]\n"
        "  params: {texture_erosion_px: 4, evaluate_samples: 2000}\n"
        "items:\n  - prompt: p\n    init: library\n    tags: [b, a]\n"
        "    params: {texture_erosion_px: 8}\n"
    )
    (request,) = parse_manifest(_write(tmp_path / "m.yaml", text)).requests
    assert request.init == "library"
    assert request.tags == ("a", "b")
    assert request.params == {"texture_erosion_px": 8, "evaluate_samples": 2000}


def test_generator_defaults_to_library_and_bundles_use_file(tmp_path):
    _png(tmp_path / "b.png", (256, 128))
    _png(tmp_path / "i.png")
    text = "items:\n  - prompt: p\n  - image: i.png\n    generator: kiss3dgen\n  - bundle: b.png\n"
    requests = parse_manifest(_write(tmp_path / "m.yaml", text)).requests
    assert [(r.kind, r.generator) for r in requests] == [
        ("prompt", "library"), ("image", "kiss3dgen"), ("bundle", "file")
    ]


def test_a_bundle_with_another_generator_is_rejected(tmp_path):
    _png(tmp_path / "b.png", (16, 8))
    parsed = parse_manifest(_write(tmp_path / "m.yaml", "items:\n  - bundle: b.png\n"
                                   "    generator: library\n"))
    assert "uses the 'file' generator" in parsed.rejected[0].reason


def test_identity_ignores_tags_ids_and_lines_but_not_params(tmp_path):
    rows = [
        {"prompt": "a cup", "id": "one", "tags": ["x"]},
        {"prompt": "a cup", "id": "two"},
        {"prompt": "a cup", "params": {"evaluate_samples": 3000}},
    ]
    path = _write(tmp_path / "m.jsonl", "\n".join(json.dumps(r) for r in rows))
    ids = [r.canonical_json() for r in parse_manifest(path).requests]
    assert ids[0] == ids[1] != ids[2]


def test_image_identity_is_its_content_not_its_path(tmp_path):
    _png(tmp_path / "a.png")
    shutil.copy(tmp_path / "a.png", tmp_path / "copy.png")
    _png(tmp_path / "other.png", colour=(1, 2, 3))
    text = "items:\n  - image: a.png\n  - image: copy.png\n  - image: other.png\n"
    requests = parse_manifest(_write(tmp_path / "m.yaml", text)).requests
    assert requests[0].image_ref == str((tmp_path / "a.png").resolve())
    assert requests[0].canonical() == requests[1].canonical() != requests[2].canonical()


def test_a_duplicate_id_does_not_reject_the_first_row(tmp_path):
    rows = [{"id": "x", "prompt": "first"}, {"id": "x", "prompt": "second"}]
    parsed = parse_manifest(_write(tmp_path / "m.jsonl", "\n".join(map(json.dumps, rows))))
    assert [r.prompt for r in parsed.requests] == ["first"]
    assert parsed.rejected[0].item_id == "x"


# --------------------------------------------------------------------------- confinement


def test_image_roots_admit_images_outside_the_manifest_folder(tmp_path):
    image = _png(tmp_path / "library" / "ref.png")
    path = _write(tmp_path / "manifests" / "m.yaml", f"items:\n  - image: {image}\n")
    assert not parse_manifest(path).ok
    parsed = parse_manifest(path, image_roots=[tmp_path / "library"])
    assert parsed.ok and parsed.requests[0].image_ref == str(image.resolve())


def test_symlink_escaping_the_manifest_folder_is_rejected(tmp_path):
    outside = _png(tmp_path / "secret" / "s.png")
    folder = tmp_path / "manifests"
    folder.mkdir()
    os.symlink(outside, folder / "link.png")
    os.symlink(tmp_path / "secret", folder / "linkdir")
    text = "items:\n  - image: link.png\n  - image: linkdir/s.png\n"
    parsed = parse_manifest(_write(folder / "m.yaml", text))
    assert parsed.requests == []
    assert all("symlink that leads outside" in r.reason for r in parsed.rejected)


def test_symlink_within_the_manifest_folder_is_fine(tmp_path):
    _png(tmp_path / "real.png")
    os.symlink(tmp_path / "real.png", tmp_path / "alias.png")
    parsed = parse_manifest(_write(tmp_path / "m.yaml", "items:\n  - image: alias.png\n"))
    assert parsed.requests[0].image_ref == str((tmp_path / "real.png").resolve())


def test_max_image_pixels_is_applied(tmp_path):
    _png(tmp_path / "i.png", (8, 8))
    path = _write(tmp_path / "m.yaml", "items:\n  - image: i.png\n")
    assert parse_manifest(path, max_image_pixels=64).ok
    rejected = parse_manifest(path, max_image_pixels=63).rejected
    assert "more than the limit of 63" in rejected[0].reason


# --------------------------------------------------------------------------- remote images


def test_allowed_https_image_is_kept_by_reference_without_fetching(tmp_path):
    path = _write(tmp_path / "m.yaml", "items:\n  - image: https://Assets.Example.com/a.png\n")
    (request,) = parse_manifest(path, allow_urls=True, url_hosts=["assets.example.com"]).requests
    assert request.image_sha256 is None
    assert request.canonical()["image"] == "https://Assets.Example.com/a.png"


def test_fetched_remote_images_are_checked_and_hashed(tmp_path):
    good = _png(tmp_path / "img" / "g.png").read_bytes()
    text = "items:\n  - image: https://h.example/g.png\n  - image: https://h.example/bad.png\n"
    path = _write(tmp_path / "m.yaml", text)
    served = {"https://h.example/g.png": good, "https://h.example/bad.png": b"not an image"}
    parsed = parse_manifest(
        path, allow_urls=True, url_hosts=["h.example"], fetch=True, fetcher=served.__getitem__
    )
    assert len(parsed.requests) == 1 and parsed.requests[0].image_sha256 is not None
    assert parsed.requests[0].canonical()["image"].startswith("sha256:")
    assert "not a PNG, JPEG or WebP" in parsed.rejected[0].reason


@pytest.mark.s3
def test_s3_images_are_fetched_from_the_store_when_asked(s3_server, tmp_path):
    from storage.objects import open_store

    store = open_store(s3_server.bucket_url())
    store.put_bytes("refs/manifest-test.png", _png(tmp_path / "r.png").read_bytes())
    text = (
        f"items:\n  - image: s3://{s3_server.bucket}/refs/manifest-test.png\n"
        f"  - image: s3://{s3_server.bucket}/refs/absent.png\n"
    )
    path = _write(tmp_path / "m.yaml", text)
    os.environ["AWS_ENDPOINT_URL"] = s3_server.endpoint_url
    try:
        parsed = parse_manifest(path, fetch=True)
    finally:
        os.environ.pop("AWS_ENDPOINT_URL")
        store.delete("refs/manifest-test.png")
    assert [r.image_sha256 is not None for r in parsed.requests] == [True]
    assert "could not fetch" in parsed.rejected[0].reason and parsed.rejected[0].line == 3


def test_jsonl_lines_may_end_in_a_lone_carriage_return(tmp_path):
    manifest = tmp_path / "classic_mac.jsonl"
    manifest.write_bytes(b'{"prompt": "a red mug"}\r{"prompt": "a blue mug"}\r')
    parsed = parse_manifest(manifest)
    assert [(r.line, r.prompt) for r in parsed.requests] == [(1, "a red mug"), (2, "a blue mug")]
    assert parsed.rejected == []
