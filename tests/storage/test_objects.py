"""The object store interface, run against the local folder and a real S3 server."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from pathlib import Path

import pytest

from storage.objects import (
    _TMP_SUFFIX,
    STALE_TEMP_S,
    InvalidKey,
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    StoreConfigError,
    StoreUnavailable,
    open_store,
)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path) -> ObjectStore:
    """Each backend in turn: a fresh local folder, then a fresh prefix on the S3 server."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return request.getfixturevalue("s3_store")


def test_put_then_get_returns_the_same_bytes(store):
    store.put_bytes("assets/a1/bundle.json", b'{"x": 1}', content_type="application/json")
    assert store.get_bytes("assets/a1/bundle.json") == b'{"x": 1}'


def test_put_replaces_an_existing_object(store):
    store.put_bytes("k.txt", b"old")
    store.put_bytes("k.txt", b"new!")
    assert store.get_bytes("k.txt") == b"new!"
    assert store.size("k.txt") == 4


def test_exists_and_size(store):
    assert not store.exists("assets/a1/x.bin")
    store.put_bytes("assets/a1/x.bin", b"\0" * 1234)
    assert store.exists("assets/a1/x.bin")
    assert store.size("assets/a1/x.bin") == 1234


def test_list_by_prefix_is_sorted_and_a_plain_string_prefix(store):
    for key in ["assets/b/2.png", "assets/a/1.png", "assets/ab/3.png", "other/4.png"]:
        store.put_bytes(key, key.encode())
    assert store.list("assets/") == ["assets/a/1.png", "assets/ab/3.png", "assets/b/2.png"]
    assert store.list("assets/a") == ["assets/a/1.png", "assets/ab/3.png"]
    assert store.list("assets/a/") == ["assets/a/1.png"]
    assert store.list("nothing/") == []
    assert store.list() == ["assets/a/1.png", "assets/ab/3.png", "assets/b/2.png", "other/4.png"]


def test_delete_removes_the_key_and_is_idempotent(store):
    store.put_bytes("assets/a/1.png", b"x")
    store.delete("assets/a/1.png")
    assert not store.exists("assets/a/1.png")
    store.delete("assets/a/1.png")  # deleting a missing key is not an error, as in S3
    assert store.list("assets/") == []


def test_delete_prefix_removes_only_that_prefix(store):
    for key in ["assets/a/1", "assets/a/2", "assets/b/1"]:
        store.put_bytes(key, b"x")
    assert store.delete_prefix("assets/a/") == 2
    assert store.list() == ["assets/b/1"]


def test_missing_key_raises_object_not_found(store, tmp_path):
    with pytest.raises(ObjectNotFound) as info:
        store.get_bytes("assets/none/bundle.png")
    assert isinstance(info.value, KeyError)
    assert "assets/none/bundle.png" in str(info.value)
    with pytest.raises(ObjectNotFound):
        store.size("assets/none/bundle.png")
    with pytest.raises(ObjectNotFound):
        store.get_file("assets/none/bundle.png", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_put_file_and_get_file_round_trip(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100_000))
    store.put_file("assets/a/src.bin", src)
    dest = store.get_file("assets/a/src.bin", tmp_path / "deep" / "dest.bin")
    assert dest.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("key", ["", "/abs/key", "a/../b", "../x", "a//b", "a/./b", "a\\b"])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")


def test_presigned_url_reads_the_object_without_credentials(store):
    store.put_bytes("assets/a/preview.png", b"preview-bytes")
    url = store.presigned_url("assets/a/preview.png", expires_s=60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"preview-bytes"


def test_url_reopens_the_same_store(store):
    store.put_bytes("k", b"v")
    again = open_store(store.url)
    assert again.get_bytes("k") == b"v"


# --------------------------------------------------------------------------- S3 specifics


@pytest.mark.s3
def test_large_file_goes_up_as_a_verified_multipart_upload(s3_store, tmp_path):
    data = os.urandom(20 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    s3_store.put_file("assets/big/asset.glb", src)
    # An S3 multipart ETag is "<md5 of part md5s>-<number of parts>".
    assert s3_store.etag("assets/big/asset.glb").endswith("-3")
    assert s3_store.size("assets/big/asset.glb") == len(data)
    out = s3_store.get_file("assets/big/asset.glb", tmp_path / "back.bin")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


@pytest.mark.s3
def test_small_file_goes_up_as_a_single_put(s3_store, tmp_path):
    src = tmp_path / "small.bin"
    src.write_bytes(b"x" * 1000)
    s3_store.put_file("small.bin", src)
    assert "-" not in s3_store.etag("small.bin")


@pytest.mark.s3
def test_s3_store_keeps_keys_under_its_prefix(s3_server, s3_store):
    s3_store.put_bytes("assets/a/1", b"x")
    prefix = s3_store.prefix
    raw = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix + "/")
    assert [o["Key"] for o in raw["Contents"]] == [f"{prefix}/assets/a/1"]


@pytest.mark.s3
def test_create_bucket_option_creates_a_missing_bucket(s3_server):
    store = open_store(s3_server.bucket_url("foundry-created") + "&create_bucket=true")
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    store.delete_prefix("")


@pytest.mark.s3
def test_missing_bucket_is_a_clear_permanent_error(s3_server):
    store = open_store(s3_server.bucket_url("foundry-no-such-bucket"))
    with pytest.raises(Exception) as info:
        store.put_bytes("k", b"v")
    assert not getattr(info.value, "retryable", True)
    assert "foundry-no-such-bucket" in str(info.value)


@pytest.mark.s3
def test_wrong_credentials_are_refused_without_naming_them(s3_server):
    saved = os.environ["AWS_SECRET_ACCESS_KEY"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-xyz"
    try:
        store = open_store(s3_server.bucket_url())
        with pytest.raises(Exception) as info:
            store.put_bytes("k", b"v")
    finally:
        os.environ["AWS_SECRET_ACCESS_KEY"] = saved
    message = f"{info.value} {info.value!r} {store!r}"
    assert "denied" in message
    assert "not-the-secret-xyz" not in message and s3_server.access_key not in message


def _port_with_nothing_listening() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_s3_endpoint_fails_fast_with_a_retryable_error():
    port = _port_with_nothing_listening()
    store = S3ObjectStore("bucket", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.get_bytes("k")
    assert time.monotonic() - started < 5
    assert info.value.retryable is True
    assert f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.s3
def test_stopped_server_gives_store_unavailable_and_restart_keeps_the_data(s3_server, s3_store):
    s3_store.put_bytes("assets/a/kept.bin", b"survives a restart")
    s3_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            s3_store.put_bytes("assets/a/lost.bin", b"x")
        assert time.monotonic() - started < 5
        assert s3_server.endpoint_url.split("//")[1] in str(info.value)
        assert s3_server.secret_key not in str(info.value)
    finally:
        s3_server.start()
    assert s3_store.get_bytes("assets/a/kept.bin") == b"survives a restart"


# --------------------------------------------------------------------------- local specifics


@pytest.mark.placeholder_glbs
def test_failed_local_write_leaves_no_partial_object(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("assets/a/mesh.glb", b"complete old version")

    class Exploding:
        """A file-like source that fails halfway through the copy."""

        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 1:
                raise OSError("disk went away")
            return b"half of the new version"

    target = store._path("assets/a/mesh.glb")
    with pytest.raises(OSError, match="disk went away"):
        with store._atomic_target(target) as fh:
            import shutil

            shutil.copyfileobj(Exploding(), fh)
    assert store.get_bytes("assets/a/mesh.glb") == b"complete old version"
    assert sorted(p.name for p in target.parent.iterdir()) == ["mesh.glb"]


def test_put_file_of_a_missing_source_leaves_nothing_behind(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    with pytest.raises(FileNotFoundError):
        store.put_file("assets/a/x.bin", tmp_path / "absent.bin")
    assert store.list() == []


def test_temp_files_of_an_in_flight_write_never_show_in_list(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("assets/a/done.png", b"x")
    with store._atomic_target(store._path("assets/a/writing.png")) as fh:
        fh.write(b"partial")
        assert store.list("assets/") == ["assets/a/done.png"]
        assert not store.exists("assets/a/writing.png")
    assert store.list("assets/") == ["assets/a/done.png", "assets/a/writing.png"]


def test_delete_prunes_empty_folders_but_not_the_root(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("assets/a/b/c.txt", b"x")
    store.delete("assets/a/b/c.txt")
    assert list((tmp_path / "objects").iterdir()) == []


def test_local_presigned_url_is_a_file_uri(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("a b/c.txt", b"x")
    url = store.presigned_url("a b/c.txt")
    assert url.startswith("file://") and "a%20b" in url


# --------------------------------------------------------------------------- URLs


def test_relative_file_url_resolves_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("file://./foundry-data/objects")
    assert isinstance(store, LocalObjectStore)
    assert store.root == (tmp_path / "foundry-data" / "objects").resolve()


def test_absolute_file_url(tmp_path):
    store = open_store(f"file://{tmp_path}/objs")
    assert store.root == (tmp_path / "objs").resolve()
    assert Path(open_store(store.url).root) == store.root


def test_s3_url_options_are_parsed():
    store = open_store("s3://my-bucket/some/prefix?endpoint_url=http://127.0.0.1:1&region=eu-west-1")
    assert isinstance(store, S3ObjectStore)
    assert (store.bucket, store.prefix) == ("my-bucket", "some/prefix")
    assert (store.endpoint_url, store.region) == ("http://127.0.0.1:1", "eu-west-1")
    assert open_store(store.url).url == store.url


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("ftp://host/x", "unsupported store URL"),
        ("s3://b/p?endpoint=x", "unknown S3 store option"),
        ("s3:///prefix", "needs a bucket"),
        ("s3://key:secret@bucket/p", "not the URL"),
        ("file://", "no path"),
    ],
)
def test_bad_store_urls_are_refused_with_a_reason(url, fragment):
    with pytest.raises(StoreConfigError, match=fragment):
        open_store(url)


def test_an_endpoint_password_appears_in_no_store_error_or_repr(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")  # so the client tries the endpoint
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    port = _port_with_nothing_listening()
    store = open_store(
        f"s3://bucket/p?endpoint_url=http://user:SECRET@127.0.0.1:{port}&region=us-east-1"
    )
    with pytest.raises(StoreUnavailable) as unreachable:
        store.put_bytes("assets/a/x.bin", b"x")
    missing = ObjectNotFound("assets/a/x.bin", store.url)
    for text in (str(unreachable.value), repr(store), str(missing)):
        assert "SECRET" not in text
        assert f"127.0.0.1:{port}" in text


def test_an_invalid_endpoint_is_a_config_error_without_its_password():
    with pytest.raises(StoreConfigError) as info:
        S3ObjectStore("bucket", endpoint_url="http://user:SECRET@[not a host")
    assert "SECRET" not in str(info.value)


def _stale(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left by a killed writer")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


@pytest.mark.placeholder_glbs
def test_the_next_write_into_a_folder_sweeps_its_stale_temp_files(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    folder = tmp_path / "objects" / "assets" / "a"
    old = _stale(folder / f".mesh.glb.x1{_TMP_SUFFIX}", STALE_TEMP_S + 60)
    recent = _stale(folder / f".mesh.glb.x2{_TMP_SUFFIX}", 5)  # maybe a live writer's
    store.put_bytes("assets/a/mesh.glb", b"new")
    assert not old.exists()
    assert recent.exists()


def test_sweep_temp_removes_stale_temp_files_under_a_prefix_only(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    root = tmp_path / "objects"
    inside = _stale(root / "assets" / "a" / f".x.png.1{_TMP_SUFFIX}", STALE_TEMP_S + 60)
    outside = _stale(root / "inputs" / f".y.png.1{_TMP_SUFFIX}", STALE_TEMP_S + 60)
    assert store.sweep_temp("assets/") == 1
    assert not inside.exists() and outside.exists()


def test_stored_objects_get_the_mode_the_umask_allows(tmp_path):
    previous = os.umask(0o027)
    try:
        store = LocalObjectStore(tmp_path / "objects")
        store.put_bytes("assets/a/x.bin", b"x")
        src = tmp_path / "src.bin"
        src.write_bytes(b"y")
        store.put_file("assets/a/y.bin", src)
    finally:
        os.umask(previous)
    for name in ("x.bin", "y.bin"):
        mode = (tmp_path / "objects" / "assets" / "a" / name).stat().st_mode & 0o777
        assert mode == 0o640, oct(mode)
