"""Inputs a git checkout cannot hold (FIFOs, /proc files) and inputs that are valid but were
refused or split: each is judged at validation with a one-line reason, never a traceback or a
hang."""

from __future__ import annotations

import json
import os
import threading
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from intake.images import ImageRejected, check_sidecar, load_reference_image
from intake.limits import MIN_BUNDLE_TILE
from intake.parse import parse_manifest
from storage.identity import asset_identity

TILE = MIN_BUNDLE_TILE


def _bundle(path: Path, tile: int = TILE) -> Path:
    Image.new("RGB", (4 * tile, 2 * tile), (255, 255, 255)).save(path)
    return path


def _manifest(folder: Path, lines: list[dict], name: str = "m.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _parse_within(seconds: float, path: Path, **options):
    """``parse_manifest(path)`` run in a thread; fails the test if it has not returned in time
    (a FIFO read blocks forever)."""
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("parsed", parse_manifest(path, **options)), daemon=True
    )
    thread.start()
    thread.join(seconds)
    assert "parsed" in outcome, f"parsing {path.name} did not return within {seconds} s"
    return outcome["parsed"]


def test_a_fifo_sidecar_is_rejected_at_validation_without_waiting(tmp_path):
    _bundle(tmp_path / "b.png")
    os.mkfifo(tmp_path / "b.json")
    parsed = _parse_within(10, _manifest(tmp_path, [{"prompt": "a valid chair"},
                                                    {"bundle": "b.png"}]))
    assert [r.line for r in parsed.rejected] == [2]
    assert "sidecar path 'b.json' is not a regular file" in parsed.rejected[0].reason
    assert len(parsed.requests) == 1


def test_a_sidecar_symlink_to_a_system_file_is_rejected(tmp_path):
    _bundle(tmp_path / "b.png")
    (tmp_path / "b.json").symlink_to("/etc/passwd")
    parsed = parse_manifest(_manifest(tmp_path, [{"bundle": "b.png"}]))
    assert "is a symlink that leads outside" in parsed.rejected[0].reason
    assert not parsed.requests


def test_a_sidecar_larger_than_the_cap_is_rejected(tmp_path):
    _bundle(tmp_path / "b.png")
    (tmp_path / "b.json").write_text(json.dumps({"producer": "x" * 70_000}))
    parsed = parse_manifest(_manifest(tmp_path, [{"bundle": "b.png"}]))
    assert "bytes, more than 65536" in parsed.rejected[0].reason


def test_a_sidecar_whose_tile_disagrees_with_the_bundle_is_rejected(tmp_path):
    _bundle(tmp_path / "b.png")
    (tmp_path / "b.json").write_text(json.dumps({"tile": 2 * TILE}))
    parsed = parse_manifest(_manifest(tmp_path, [{"bundle": "b.png"}]))
    assert f"sidecar says tile {2 * TILE} but the bundle's tile is {TILE}" in (
        parsed.rejected[0].reason
    )


def test_a_well_formed_sidecar_with_extra_keys_is_accepted(tmp_path):
    _bundle(tmp_path / "b.png")
    sidecar = {"spec": "kiss3d-bundle-v1", "tile": TILE, "azimuths": [0, 90, 180, 270],
               "elevation": 5, "offset": [0.0, 0.1, 0.0], "producer": "me", "note": "kept"}
    (tmp_path / "b.json").write_text(json.dumps(sidecar))
    parsed = parse_manifest(_manifest(tmp_path, [{"bundle": "b.png"}]))
    assert parsed.ok and len(parsed.requests) == 1


@pytest.mark.parametrize(
    "text, reason",
    [
        (b'{"azimuths": [0, 90, 180]}', "'azimuths' must be a list of 4 numbers"),
        (b'{"offset": [0, 0, "up"]}', "'offset' must be a list of 3 numbers"),
        (b'{"fov": true}', "'fov' must be a number, got a JSON boolean"),
        (b'{"spec": "other-v9"}', "is not 'kiss3d-bundle-v1'"),
        (b'{"scale": NaN}', "not valid JSON"),
        (b'"just text"', "must be a JSON object, got a JSON string"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_a_sidecar_of_the_wrong_shape_names_its_problem(text, reason):
    with pytest.raises(ImageRejected, match=reason.replace("[", r"\[")):
        check_sidecar(text)


def test_a_manifest_symlinked_to_proc_self_mem_is_refused_in_one_line(tmp_path):
    link = tmp_path / "x.jsonl"
    link.symlink_to("/proc/self/mem")
    parsed = _parse_within(10, link)
    assert [(r.line, r.reason) for r in parsed.rejected] == [
        (0, "manifest cannot be read: Input/output error")
    ]


def test_proc_self_mem_itself_is_refused_for_its_missing_extension():
    parsed = parse_manifest("/proc/self/mem")
    assert "unknown manifest format '(no extension)'" in parsed.rejected[0].reason


def test_a_manifest_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "m.yaml")
    parsed = _parse_within(10, tmp_path / "m.yaml")
    assert parsed.rejected[0].reason == "manifest path is not a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_manifest_without_read_permission_is_refused_in_one_line(tmp_path):
    path = _manifest(tmp_path, [{"prompt": "a chair"}])
    path.chmod(0)
    parsed = parse_manifest(path)
    assert parsed.rejected[0].reason == "manifest cannot be opened: Permission denied"


def test_an_upper_case_s3_scheme_is_accepted_and_written_in_lower_case(tmp_path):
    parsed = parse_manifest(_manifest(tmp_path, [{"image": "S3://my-bucket/chairs/a.png"}]))
    assert parsed.ok
    assert parsed.requests[0].image_ref == "s3://my-bucket/chairs/a.png"


@pytest.mark.parametrize("bucket", ["ab", "Upper", "under_score", "-dash", "a" * 64, "a..b"])
def test_an_s3_reference_with_an_invalid_bucket_name_is_rejected(tmp_path, bucket):
    parsed = parse_manifest(_manifest(tmp_path, [{"image": f"s3://{bucket}/a.png"}]))
    assert f"{bucket!r} is not a valid S3 bucket name" in parsed.rejected[0].reason


def test_a_prompt_with_an_emoji_zwj_sequence_is_accepted(tmp_path):
    family = "\U0001F468\u200D\U0001F469\u200D\U0001F467"  # man ZWJ woman ZWJ girl
    heart = "\u2764\uFE0F"  # heavy black heart + emoji-style variation selector
    parsed = parse_manifest(_manifest(tmp_path, [{"prompt": f"a statue of {family} {heart}"}]))
    assert parsed.ok, parsed.rejected
    assert family in parsed.requests[0].prompt


@pytest.mark.parametrize("char", ["\u200B", "\u202E", "\u2066", "\x07"])
def test_other_control_and_format_characters_are_still_refused(tmp_path, char):
    parsed = parse_manifest(_manifest(tmp_path, [{"prompt": f"a chair{char}"}]))
    assert f"non-printable character (U+{ord(char):04X})" in parsed.rejected[0].reason


def test_a_prompt_in_nfc_and_in_nfd_is_one_asset(tmp_path):
    composed = "a caf\u00e9 table"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    parsed = parse_manifest(_manifest(tmp_path, [{"prompt": composed}, {"prompt": decomposed}]))
    first, second = parsed.requests
    assert first.prompt == second.prompt == composed
    assert asset_identity(first.canonical(), "g") == asset_identity(second.canonical(), "g")


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_a_large_reference_image_is_loaded_within_the_pixel_bound(tmp_path, fmt, suffix):
    path = tmp_path / f"big{suffix}"
    Image.new("RGB", (3000, 1500), (200, 30, 30)).save(path, format=fmt)
    bound = 512 * 512
    image = load_reference_image(path, max_pixels=bound)
    height, width, channels = image.shape
    assert channels == 3 and image.dtype.name == "uint8"
    assert width * height <= bound
    assert abs(width / height - 2.0) < 0.02  # aspect kept


def test_a_sixteen_bit_png_is_loaded_as_eight_bit_rgb_within_the_bound(tmp_path):
    path = tmp_path / "deep.png"
    Image.new("I;16", (1200, 1200), 40000).save(path)
    image = load_reference_image(path, max_pixels=300 * 300)
    assert image.shape[2] == 3 and image.dtype.name == "uint8"
    assert image.shape[0] * image.shape[1] <= 300 * 300
    assert int(image.mean()) == 40000 >> 8  # grey stays grey, not clipped to white


def test_a_reference_image_within_the_bound_keeps_its_size(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(path)
    assert load_reference_image(path, max_pixels=10_000).shape == (30, 40, 3)
