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


def _bundle_png(path, tile: int = 64):
    Image.new("RGB", (4 * tile, 2 * tile), (255, 255, 255)).save(path)
    return path


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _batch_items(config, batch_id: str) -> list:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from storage.schema import BatchItem
    from tasks.resources import get_engine

    with Session(get_engine(config.database_url)) as session:
        return list(session.scalars(
            select(BatchItem).where(BatchItem.batch_id == batch_id).order_by(BatchItem.line)
        ))


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_a_bundle_sidecar_symlinked_outside_is_rejected_and_never_stored(pipeline_config, tmp_path):
    _bundle_png(tmp_path / "b.png")
    (tmp_path / "b.json").symlink_to("/etc/passwd")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("items:\n  - prompt: a valid chair\n  - bundle: b.png\n")

    result = ingest_manifest(manifest, pipeline_config)

    assert [r["line"] for r in result.rejected] == [3]
    assert "symlink that leads outside" in result.rejected[0]["reason"]
    assert len(result.asset_ids) == 1
    assert not open_store(pipeline_config.store_url).list("inputs/")


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_a_fifo_sidecar_rejects_its_row_without_hanging_ingest(pipeline_config, tmp_path):
    import os
    import threading

    _bundle_png(tmp_path / "b.png")
    os.mkfifo(tmp_path / "b.json")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("items:\n  - prompt: a valid chair\n  - bundle: b.png\n")
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("result", ingest_manifest(manifest, pipeline_config)),
        daemon=True,
    )
    thread.start()
    thread.join(30)

    assert "result" in outcome, "ingest waited on the FIFO"
    assert "is not a regular file" in outcome["result"].rejected[0]["reason"]


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_a_valid_sidecar_is_stored_beside_its_bundle(pipeline_config, tmp_path):
    data = _bundle_png(tmp_path / "b.png").read_bytes()
    (tmp_path / "b.json").write_text('{"tile": 64, "producer": "test"}')
    manifest = tmp_path / "m.yaml"
    manifest.write_text("items:\n  - bundle: b.png\n")

    result = ingest_manifest(manifest, pipeline_config)

    assert not result.rejected
    sha = hashlib.sha256(data).hexdigest()
    store = open_store(pipeline_config.store_url)
    assert store.get_bytes(f"inputs/{sha}.json") == b'{"tile": 64, "producer": "test"}'


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_an_upper_case_s3_scheme_is_fetched_and_stored_like_a_lower_case_one(
    pipeline_config, tmp_path
):
    data = _png_bytes()
    served = Served({"s3://refs-bucket/chair.png": data})
    config = pipeline_config.model_copy(update={"allow_url_fetch": True})
    manifest = tmp_path / "m.yaml"
    manifest.write_text("items:\n  - image: S3://refs-bucket/chair.png\n")

    result = ingest_manifest(manifest, config, fetcher=served)

    assert not result.rejected and len(result.asset_ids) == 1
    assert open_store(config.store_url).exists(f"inputs/{hashlib.sha256(data).hexdigest()}.png")


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_an_unreachable_store_rejects_only_the_rows_that_need_it_and_hides_its_password(
    pipeline_config, tmp_path, monkeypatch
):
    # Credentials present, so the client really tries the endpoint (and finds nobody there).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    endpoint = f"http://user:SECRET@127.0.0.1:{_closed_port()}"
    config = pipeline_config.model_copy(update={
        "store_url": f"s3://foundry-down/p?endpoint_url={endpoint}&region=us-east-1",
    })
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "photo.png")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "items:\n"
        "  - prompt: a valid chair\n"
        "  - image: s3://refs-bucket/chair.png\n"  # accepted by reference, fetched at ingest
        "  - image: photo.png\n"
        "    variants: 2\n"
        "  - prompt: a valid table\n"
    )

    result = ingest_manifest(manifest, config)

    assert [r["line"] for r in result.rejected] == [3, 4]
    assert all("unreachable" in r["reason"] for r in result.rejected)
    assert len(result.asset_ids) == 2
    items = _batch_items(config, result.batch_id)
    assert [(i.line, i.status) for i in items] == [
        (2, "accepted"), (3, "rejected"), (4, "rejected"), (6, "accepted")
    ]
    shown = repr(result.rejected) + repr([(i.reason, i.raw) for i in items])
    assert "SECRET" not in shown
    assert "127.0.0.1" in shown  # the reason still says where


@pytest.mark.s3
@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_a_missing_bucket_rejects_the_rows_that_need_it_and_the_rest_go_on(
    pipeline_config, tmp_path, s3_server
):
    if not s3_server.running:
        s3_server.start()
    config = pipeline_config.model_copy(update={
        "store_url": s3_server.bucket_url("no-such-store-bucket", prefix="p"),
    })
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "photo.png")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "items:\n"
        "  - image: s3://no-such-ref-bucket/a.png\n"
        "  - image: photo.png\n"
        "  - prompt: a valid chair\n"
    )

    result = ingest_manifest(manifest, config)

    assert [r["line"] for r in result.rejected] == [2, 3]
    assert "no-such-ref-bucket" in result.rejected[0]["reason"]
    assert "bucket 'no-such-store-bucket' does not exist" in result.rejected[1]["reason"]
    assert len(result.asset_ids) == 1
