"""Remote references: fetched once per run; s3:// read with the configured store's client."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from intake.parse import parse_manifest
from intake.references import FetchedOnce, default_fetcher


def _png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


class Served:
    """Bytes served per URL, counting the downloads (stands in for a web server)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.downloads: list[str] = []

    def __call__(self, ref: str) -> bytes:
        self.downloads.append(ref)
        return self.files[ref]


def test_each_reference_is_downloaded_once_and_kept_on_disk(tmp_path):
    served = Served({"https://h.example/a.png": b"A", "https://h.example/b.png": b"B"})
    fetched = FetchedOnce(served, tmp_path)
    assert fetched("https://h.example/a.png") == b"A"
    assert fetched("https://h.example/a.png") == b"A"
    assert fetched.local_copy("https://h.example/b.png").read_bytes() == b"B"
    assert served.downloads == ["https://h.example/a.png", "https://h.example/b.png"]
    assert fetched.fetched == 2


def test_a_failed_download_is_not_remembered(tmp_path):
    served = Served({})
    fetched = FetchedOnce(served, tmp_path)
    with pytest.raises(KeyError):
        fetched("https://h.example/missing.png")
    served.files["https://h.example/missing.png"] = b"now"
    assert fetched("https://h.example/missing.png") == b"now"


def test_parsing_with_a_fetched_once_fetcher_downloads_a_repeated_image_once(tmp_path):
    url = "https://h.example/chair.png"
    served = Served({url: _png_bytes()})
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"items:\n  - image: {url}\n  - image: {url}\n    seed: 2\n")
    fetched = FetchedOnce(served, tmp_path)
    parsed = parse_manifest(
        manifest, allow_urls=True, url_hosts=["h.example"], fetch=True, fetcher=fetched
    )
    assert len(parsed.requests) == 2 and parsed.ok
    assert served.downloads == [url]


@pytest.mark.s3
def test_s3_references_use_the_configured_stores_endpoint_for_any_bucket(s3_server, tmp_path):
    """No AWS_ENDPOINT_URL in the environment: only the store URL says where the server is."""
    from storage.objects import open_store

    other = open_store(s3_server.bucket_url("foundry-refs-other") + "&create_bucket=true")
    own = open_store(s3_server.bucket_url())
    own.put_bytes("refs/own.png", b"own bytes")
    other.put_bytes("refs/other.png", b"other bytes")
    try:
        fetch = default_fetcher([], store_url=s3_server.bucket_url(prefix="pipeline"))
        assert fetch(f"s3://{s3_server.bucket}/refs/own.png") == b"own bytes"
        assert fetch("s3://foundry-refs-other/refs/other.png") == b"other bytes"
    finally:
        own.delete("refs/own.png")
        other.delete("refs/other.png")


@pytest.mark.s3
def test_s3_objects_larger_than_the_limit_are_refused_before_download(s3_server):
    from storage.objects import open_store

    own = open_store(s3_server.bucket_url())
    own.put_bytes("refs/big.png", b"x" * 100)
    try:
        fetch = default_fetcher([], max_bytes=10, store_url=s3_server.bucket_url())
        with pytest.raises(ValueError, match="100 bytes, more than 10"):
            fetch(f"s3://{s3_server.bucket}/refs/big.png")
    finally:
        own.delete("refs/big.png")

