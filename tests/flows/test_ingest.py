"""Manifest ingestion: remote inputs are downloaded once and stored as the bytes parsing checked."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from storage.objects import open_store
from tasks.ingest import ingest_manifest


def _png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


class Served:
    """Bytes served per URL, counting the downloads (stands in for a web server)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.downloads: list[str] = []

    def __call__(self, ref: str) -> bytes:
        self.downloads.append(ref)
        return self.files[ref]


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_a_remote_image_is_downloaded_once_and_stored_under_its_content_hash(
    pipeline_config, tmp_path
):
    url = "https://images.example/chair.png"
    data = _png_bytes()
    served = Served({url: data})
    config = pipeline_config.model_copy(
        update={"allow_url_fetch": True, "url_hosts": ["images.example"]}
    )
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"items:\n  - image: {url}\n  - image: {url}\n    seed: 5\n")

    result = ingest_manifest(manifest, config, fetcher=served)

    assert served.downloads == [url]
    assert len(result.asset_ids) == 2 and not result.rejected
    key = f"inputs/{hashlib.sha256(data).hexdigest()}.png"
    assert open_store(config.store_url).get_bytes(key) == data
