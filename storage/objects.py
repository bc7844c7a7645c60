"""Object store: one interface over a local folder and an S3 bucket, opened from a store URL.

Keys are ``/``-separated relative names; the pipeline uses ``assets/<asset_id>/<artefact>``.
Writes are atomic on both backends: a local write goes to a temp file in the destination
folder, is fsynced and renamed over the key; an S3 write is a single PUT or a completed
multipart upload, so a reader never sees half an object.

Store URLs (see :func:`open_store`):

- ``file://./foundry-data/objects`` (relative to the current directory), ``file:///abs/path``
- ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:8333&region=us-east-1&create_bucket=true``

S3 credentials come from the usual AWS sources (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` / config files); they never appear in URLs,
reprs, logs or error messages.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from storage.redact import redact_text, redact_url

# Files larger than this go up to S3 as a multipart upload, in parts of this size.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
MULTIPART_CHUNKSIZE = 8 * 1024 * 1024
# Short timeouts and few retries so that a down server fails in seconds, not minutes;
# the retrying is Prefect's job (StoreUnavailable.retryable), not the client's.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 2
# Suffix of in-flight local temp files; keys may not end with it, list() never shows it.
_TMP_SUFFIX = ".foundry-tmp"
#: A temp file older than this was left by an interrupted write (a killed process); a live
#: write finishes in far less, so sweeping older ones never races a writer.
STALE_TEMP_S = 15 * 60


class StoreError(Exception):
    """An object-store operation failed for a reason retrying will not fix."""

    retryable = False


class StoreUnavailable(StoreError):
    """The store could not be reached (connection refused, timeout, 5xx); worth retrying."""

    retryable = True


class InvalidKey(StoreError, ValueError):
    """A key that is empty, absolute, or climbs out of the store (``..``)."""


class StoreConfigError(StoreError, ValueError):
    """A store URL that cannot be opened (unknown scheme, missing bucket, bad option)."""


class ObjectNotFound(StoreError, KeyError):
    """The key does not exist in the store."""

    def __init__(self, key: str, store_url: str) -> None:
        super().__init__(key)
        self.key = key
        self.store_url = store_url

    def __str__(self) -> str:
        return f"object {self.key!r} not found in {redact_url(self.store_url)}"


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative key, else raise :class:`InvalidKey`.

    A key is ``/``-separated, non-empty, relative, with no empty, ``.`` or ``..`` parts,
    no backslashes or NUL characters, and does not end with the temp-file suffix.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"object key must be a non-empty string, got {key!r}")
    if key.startswith("/"):
        raise InvalidKey(f"object key must be relative, got {key!r}")
    if "\\" in key or "\x00" in key:
        raise InvalidKey(f"object key may not contain backslashes or NUL, got {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidKey(f"object key may not contain empty, '.' or '..' parts, got {key!r}")
    if key.endswith(_TMP_SUFFIX):
        raise InvalidKey(f"object key may not end with {_TMP_SUFFIX!r}, got {key!r}")
    return key


def _validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key's beginning (its last part may be partial or empty)."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str) or prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise InvalidKey(f"prefix must be a relative key prefix, got {prefix!r}")
    if any(p in ("", ".", "..") for p in prefix.split("/")[:-1]):
        raise InvalidKey(f"prefix may not contain empty, '.' or '..' parts, got {prefix!r}")
    return prefix


class ObjectStore(abc.ABC):
    """Where the pipeline's artefacts live. Keys are relative ``/``-separated names.

    Every method raises :class:`InvalidKey` for an unsafe key, :class:`ObjectNotFound` for a
    missing key where one is needed, and :class:`StoreUnavailable` (``retryable = True``) when
    the backing service cannot be reached.
    """

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The store URL that :func:`open_store` turns back into this store."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Write ``data`` under ``key`` atomically, replacing any existing object."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | os.PathLike, content_type: str | None = None) -> None:
        """Upload the local file ``path`` under ``key`` atomically (multipart on S3 if large)."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object."""

    @abc.abstractmethod
    def get_file(self, key: str, dest_path: str | os.PathLike) -> Path:
        """Download ``key`` to ``dest_path`` (parents created, written atomically); returns it."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size of the object in bytes."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as in S3), sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error (as in S3)."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; returns how many were deleted."""
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    @abc.abstractmethod
    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        """A URL that reads ``key`` without credentials (``file://`` URI for a local store)."""

    def sweep_temp(self, prefix: str = "", older_than_s: float = STALE_TEMP_S) -> int:
        """Remove temp files that interrupted writes left under ``prefix`` (older than
        ``older_than_s`` seconds); returns how many. Only a local store has any: an S3 write is
        one PUT or a completed multipart upload."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r})"


# --------------------------------------------------------------------------- local folder


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root``; a key ``a/b/c.png`` is the file ``root/a/b/c.png``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        # mkstemp creates 0600 files; stored objects get what the umask allows, like any
        # file this process creates (0644 under the usual 022).
        self._file_mode = 0o666 & ~_current_umask()
        self._swept: set[Path] = set()  # folders whose stale temp files were swept already

    @property
    def url(self) -> str:
        return "file://" + quote(str(self.root))

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    @contextlib.contextmanager
    def _atomic_target(self, dest: Path, durable: bool = True) -> Iterator[Any]:
        """Yield a binary file in ``dest``'s folder; on success fsync it and rename over dest.

        On any error the temp file is removed and ``dest`` is left as it was. ``durable=False``
        skips the fsyncs: for scratch copies (downloads), which need atomicity, not durability.
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        if durable and dest.parent not in self._swept:
            # The first write into a folder sweeps what an interrupted write left there.
            self._swept.add(dest.parent)
            _sweep_folder(dest.parent, STALE_TEMP_S)
        fd, tmp_name = tempfile.mkstemp(
            dir=dest.parent, prefix=f".{dest.name}.", suffix=_TMP_SUFFIX
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                if durable:
                    os.fchmod(fh.fileno(), self._file_mode)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if not durable:
            return
        # The rename itself is durable only once the folder entry is synced.
        with contextlib.suppress(OSError):
            dir_fd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with self._atomic_target(self._path(key)) as fh:
            fh.write(data)

    def put_file(self, key: str, path: str | os.PathLike, content_type: str | None = None) -> None:
        dest = self._path(key)
        with open(path, "rb") as src, self._atomic_target(dest) as fh:
            shutil.copyfileobj(src, fh, length=1024 * 1024)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key, self.url) from None

    def get_file(self, key: str, dest_path: str | os.PathLike) -> Path:
        path = self._path(key)
        dest = Path(dest_path)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key, self.url) from None
        with src, self._atomic_target(dest, durable=False) as fh:
            shutil.copyfileobj(src, fh, length=1024 * 1024)
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key, self.url)
        return path.stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        # Walk only the deepest folder the prefix names; the rest is a string filter.
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder_part.split("/")) if folder_part else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.endswith(_TMP_SUFFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()
        self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, folder: Path) -> None:
        """Remove now-empty folders between ``folder`` and the root (never the root)."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        # A local file needs no signature; expires_s is accepted for interface parity.
        return self._path(key).as_uri()

    def sweep_temp(self, prefix: str = "", older_than_s: float = STALE_TEMP_S) -> int:
        _validate_prefix(prefix)
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder_part.split("/")) if folder_part else self.root
        removed = 0
        for dirpath, _dirnames, _filenames in os.walk(start):
            removed += _sweep_folder(Path(dirpath), older_than_s)
        return removed


def _sweep_folder(folder: Path, older_than_s: float) -> int:
    """Remove the temp files in ``folder`` (not below it) older than ``older_than_s``."""
    cutoff = time.time() - older_than_s
    removed = 0
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(_TMP_SUFFIX):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc``);
    elsewhere set and restored at once (``os.umask`` has no read-only form)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- S3


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_RETRYABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttling",
    "RequestTimeTooSkewed",
    "503",
    "500",
    "502",
    "504",
}
_AUTH_CODES = {
    "AccessDenied",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "403",
    "InvalidToken",
    "ExpiredToken",
}


class S3ObjectStore(ObjectStore):
    """Objects in ``bucket`` under ``prefix`` of an S3 (or S3-compatible) service.

    Path-style addressing (``endpoint/bucket/key``) so that any S3-compatible server works.
    Large files go up as multipart uploads (threshold :data:`MULTIPART_THRESHOLD`); other
    writes are a single PUT.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        create_bucket: bool = False,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - boto3 is a core dependency
            raise StoreConfigError("S3 stores need boto3: pip install boto3") from exc
        if not bucket:
            raise StoreConfigError("S3 store URL needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # Flexible checksums (boto3 >= 1.36 default) are not understood by every
            # S3-compatible server; send them only where the API requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()
        try:
            self._client = session.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        except ValueError as exc:  # botocore: "Invalid endpoint: <the whole URL>"
            raise StoreConfigError(redact_text(f"cannot open the S3 store: {exc}")) from None
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(MULTIPART_CHUNKSIZE, 5 * 1024 * 1024),
            max_concurrency=4,
        )
        self._multipart_threshold = multipart_threshold
        if create_bucket:
            self.ensure_bucket()

    # -- naming

    @property
    def url(self) -> str:
        query = {}
        if self.endpoint_url:
            query["endpoint_url"] = self.endpoint_url
        if self.region:
            query["region"] = self.region
        path = f"/{self.prefix}" if self.prefix else ""
        return f"s3://{self.bucket}{path}" + (f"?{urlencode(query)}" if query else "")

    @property
    def _where(self) -> str:
        # Redacted: an endpoint may carry userinfo, and this text ends up in logs and rows.
        return redact_url(self.endpoint_url) if self.endpoint_url else "the default AWS S3 endpoint"

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _strip(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    # -- error translation

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Translate botocore/boto3 errors into the store's error classes.

        Messages name the endpoint, bucket and key, never the credentials.
        """
        from botocore import exceptions as bex

        try:
            yield
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - we re-raise everything we do not map
            cause: BaseException | None = exc
            # boto3's transfer manager wraps client errors (S3UploadFailedError ...).
            for _ in range(8):  # a chain is short; the bound only guards against cycles
                if cause is None:
                    break
                mapped = self._map_error(cause, key, bex)
                if mapped is not None:
                    raise mapped from None
                cause = cause.__cause__ or cause.__context__
            if isinstance(exc, bex.BotoCoreError):  # its text may repeat the endpoint URL
                raise StoreError(
                    redact_text(f"S3 error for s3://{self.bucket} at {self._where}: {exc}")
                ) from None
            raise

    def _map_error(self, exc: BaseException, key: str | None, bex: Any) -> StoreError | None:
        target = f"s3://{self.bucket}/{self._full(key) if key else self.prefix}"
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            return StoreError(
                f"no usable AWS credentials for {target} at {self._where} "
                "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            )
        if isinstance(
            exc,
            bex.EndpointConnectionError
            | bex.ConnectTimeoutError
            | bex.ReadTimeoutError
            | bex.ConnectionClosedError
            | bex.ProxyConnectionError
            | bex.HTTPClientError,
        ):
            return StoreUnavailable(
                f"S3 endpoint {self._where} is unreachable ({type(exc).__name__}) "
                f"while accessing {target}"
            )
        if isinstance(exc, bex.ClientError):
            code, status = _error_code(exc), _http_status(exc)
            if code == "NoSuchBucket":
                return StoreError(f"bucket {self.bucket!r} does not exist at {self._where}")
            if code in _NOT_FOUND_CODES and key is not None:
                return ObjectNotFound(key, self.url)
            if code in _RETRYABLE_CODES or status >= 500:
                return StoreUnavailable(
                    f"S3 endpoint {self._where} answered {code or status} for {target}; "
                    "try again later"
                )
            if code in _AUTH_CODES:
                return StoreError(
                    f"access to {target} at {self._where} was denied ({code}); "
                    "check the AWS credentials in the environment or profile"
                )
            return StoreError(f"S3 error {code or status} for {target} at {self._where}")
        return None

    # -- operations

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        with self._errors():
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except Exception as exc:
                if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                    raise
            self._client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        full = self._full(key)
        extra = {"ContentType": content_type} if content_type else {}
        with self._errors(key):
            if len(data) >= self._multipart_threshold:
                import io

                self._client.upload_fileobj(
                    io.BytesIO(data),
                    self.bucket,
                    full,
                    ExtraArgs=extra or None,
                    Config=self._transfer,
                )
            else:
                self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **extra)

    def put_file(self, key: str, path: str | os.PathLike, content_type: str | None = None) -> None:
        full = self._full(key)
        extra = {"ContentType": content_type} if content_type else None
        with self._errors(key):
            self._client.upload_file(
                os.fspath(path), self.bucket, full, ExtraArgs=extra, Config=self._transfer
            )

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._errors(key):
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            with contextlib.closing(response["Body"]) as body:
                return body.read()

    def get_file(self, key: str, dest_path: str | os.PathLike) -> Path:
        full = self._full(key)
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Download beside the destination, then rename: no half file under dest's name.
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
        try:
            with self._errors(key):
                self._client.download_file(self.bucket, full, str(tmp), Config=self._transfer)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def _head(self, key: str) -> dict:
        with self._errors(key):
            return self._client.head_object(Bucket=self.bucket, Key=self._full(key))

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def etag(self, key: str) -> str:
        """The object's ETag without quotes (``<md5>-<parts>`` for a multipart upload)."""
        return str(self._head(key)["ETag"]).strip('"')

    def list(self, prefix: str = "") -> list[str]:
        _validate_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        keys: list[str] = []
        with self._errors():
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                keys.extend(self._strip(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        with self._errors():
            for start in range(0, len(keys), 1000):  # the S3 limit per DeleteObjects call
                batch = [{"Key": self._full(k)} for k in keys[start : start + 1000]]
                self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
        return len(keys)

    def presigned_url(self, key: str, expires_s: int = 3600) -> str:
        with self._errors(key):
            return self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._full(key)},
                ExpiresIn=int(expires_s),
            )


# --------------------------------------------------------------------------- URLs


_S3_OPTIONS = {"endpoint_url", "region", "create_bucket"}


def open_store(url: str) -> ObjectStore:
    """Open the store a URL names.

    - ``file://./rel/path`` (relative to the current directory), ``file:///abs/path``
    - ``s3://bucket[/prefix][?endpoint_url=URL&region=NAME&create_bucket=true]``
    """
    if url.startswith("file://"):
        raw = unquote(url[len("file://") :].split("?", 1)[0])
        if raw.startswith("localhost/"):
            raw = raw[len("localhost") :]
        if not raw:
            raise StoreConfigError(f"file store URL has no path: {url!r}")
        return LocalObjectStore(Path(raw) if raw.startswith("/") else Path.cwd() / raw)
    if url.startswith("s3://"):
        parts = urlsplit(url)
        options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(options) - _S3_OPTIONS)
        if unknown:
            raise StoreConfigError(
                f"unknown S3 store option(s) {unknown}; known: {sorted(_S3_OPTIONS)}"
            )
        if parts.username or parts.password:
            raise StoreConfigError(
                "put S3 credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, not the URL"
            )
        create = options.get("create_bucket", "false").lower() in {"1", "true", "yes"}
        return S3ObjectStore(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=options.get("endpoint_url") or None,
            region=options.get("region") or None,
            create_bucket=create,
        )
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise StoreConfigError(
        f"unsupported store URL {scheme!r}: use file://PATH or s3://BUCKET/PREFIX"
    )


def sync_to_folder(
    store: ObjectStore, dest: str | os.PathLike, prefix: str = ""
) -> tuple[int, int]:
    """Mirror the objects under ``prefix`` into the folder ``dest`` (keys relative to ``prefix``).

    Only objects that are missing locally or differ in size are downloaded. Returns
    ``(downloaded, unchanged)``. Used to work on a bucket-hosted mesh library locally.
    """
    dest = Path(dest)
    downloaded = unchanged = 0
    for key in store.list(prefix):
        relative = key[len(prefix):].lstrip("/")
        if not relative:
            continue
        target = dest / relative
        if target.is_file() and target.stat().st_size == store.size(key):
            unchanged += 1
            continue
        store.get_file(key, target)
        downloaded += 1
    return downloaded, unchanged
