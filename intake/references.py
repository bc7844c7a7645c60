"""Image and bundle references: confinement of local paths, s3:// and allow-listed https://
URLs, fetched and checked once per manifest."""

from __future__ import annotations

import os
import re
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from intake.images import (
    ImageRejected,
    check_bundle,
    check_image,
    check_sidecar,
    read_header_size,
)
from intake.limits import FETCH_TIMEOUT_S, MAX_IMAGE_BYTES, MAX_PATH_BYTES, MAX_SIDECAR_BYTES
from storage.redact import redact_text, redact_url

if TYPE_CHECKING:
    from storage.objects import ObjectStore

Fetcher = Callable[[str], bytes]


@dataclass
class ReferenceContext:
    manifest_dir: Path
    roots: list[Path]
    root_names: str
    allow_urls: bool
    url_hosts: set[str]
    max_image_pixels: int
    fetch: bool
    fetcher: Fetcher
    cache: dict[tuple[str, str], tuple[str, str | None]] = field(default_factory=dict)


class ReferenceRejected(Exception):
    pass


def resolve_reference(ref: str, what: str, ctx: ReferenceContext) -> tuple[str, str | None]:
    """(resolved reference, sha256 or None) for an image or bundle.

    Raises :class:`ReferenceRejected`."""
    key = (what, ref)
    if key not in ctx.cache:
        ctx.cache[key] = _resolve_uncached(ref, what, ctx)
    return ctx.cache[key]


def _resolve_uncached(ref: str, what: str, ctx: ReferenceContext) -> tuple[str, str | None]:
    if "://" in ref:
        return _resolve_remote(ref, what, ctx)
    resolved, data = read_confined(ref, what, ctx.manifest_dir, ctx.roots, MAX_IMAGE_BYTES)
    sha = _checked_sha(data, ref, what, ctx)
    if what == "bundle":
        read_sidecar(resolved, ctx.roots, tile=_bundle_tile(data))
    return str(resolved), sha


#: S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens, a letter or digit at
#: both ends (the AWS rule, which S3-compatible servers follow).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _resolve_remote(ref: str, what: str, ctx: ReferenceContext) -> tuple[str, str | None]:
    """An ``s3://`` or allow-listed ``https://`` reference, its scheme in lower case (schemes
    are case-insensitive, RFC 3986, and everything downstream matches ``s3://``)."""
    scheme, rest = ref.split("://", 1)
    scheme = scheme.lower()
    ref = f"{scheme}://{rest}"
    if "\x00" in ref:
        raise ReferenceRejected(f"{what} reference contains a NUL character")
    if scheme == "s3":
        parts = urlsplit(ref)
        if not parts.netloc or not parts.path.strip("/"):
            raise ReferenceRejected(f"{what} reference {ref!r} must be s3://bucket/key")
        if not _BUCKET_RE.match(parts.netloc) or ".." in parts.netloc:
            raise ReferenceRejected(
                f"{what} reference {ref!r}: {parts.netloc!r} is not a valid S3 bucket name "
                "(3-63 lower-case letters, digits, '.' and '-')"
            )
    elif scheme == "https":
        if not ctx.allow_urls:
            raise ReferenceRejected(
                f"{what} URLs are not allowed ({redact_url(ref)!r}); enable "
                "FOUNDRY_ALLOW_URL_FETCH and list the host in FOUNDRY_URL_HOSTS"
            )
        parts = urlsplit(ref)
        if parts.username or parts.password:
            raise ReferenceRejected(f"{what} URL may not contain credentials")
        host = (parts.hostname or "").lower()
        if host not in ctx.url_hosts:
            raise ReferenceRejected(
                f"{what} URL host {host!r} is not an allowed host (FOUNDRY_URL_HOSTS)"
            )
    else:
        raise ReferenceRejected(
            f"{what} URL scheme {scheme!r} is not allowed "
            "(local paths, s3://bucket/key, or https:// from allowed hosts)"
        )
    if not ctx.fetch:
        return ref, None
    try:
        data = ctx.fetcher(ref)
    except Exception as exc:  # noqa: BLE001 - any failure to fetch rejects the row
        raise ReferenceRejected(
            redact_text(f"could not fetch {what} {ref!r}: {exc}")
        ) from None
    return ref, _checked_sha(data, ref, what, ctx)


def reference_roots(manifest: Path, image_roots: Iterable[str | os.PathLike]) -> list[Path]:
    """The folders local references may resolve into: the manifest's own, then
    ``image_roots``, all with symlinks resolved."""
    return [Path(manifest).resolve().parent, *(Path(r).resolve() for r in image_roots)]


def read_confined(
    ref: str, what: str, base: Path, roots: list[Path], max_bytes: int
) -> tuple[Path, bytes]:
    """``(resolved path, bytes)`` of the local file ``ref`` (relative to ``base``).

    The rules every local input obeys: no NUL, at most :data:`MAX_PATH_BYTES`, inside one of
    ``roots`` once symlinks are resolved, a regular file (checked on the opened descriptor,
    so a FIFO or device is refused without blocking and a swap after the check changes
    nothing), at most ``max_bytes``. Raises :class:`ReferenceRejected` naming the rule.
    """
    if "\x00" in ref:
        raise ReferenceRejected(f"{what} path {ref[:80]!r} contains a NUL character")
    if len(os.fsencode(ref)) > MAX_PATH_BYTES:
        raise ReferenceRejected(
            f"{what} path is {len(os.fsencode(ref))} bytes long, more than {MAX_PATH_BYTES}"
        )
    shown = ref if len(ref) <= 200 else ref[:197] + "..."
    given = Path(ref)
    path = given if given.is_absolute() else base / given
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long for the OS
        raise ReferenceRejected(f"{what} path {shown!r} cannot be resolved: {_why(exc)}") from None
    if not any(resolved.is_relative_to(root) for root in roots):
        lexical = Path(os.path.normpath(path))
        how = (
            "is a symlink that leads"
            if any(lexical.is_relative_to(root) for root in roots)
            else "is"
        )
        raise ReferenceRejected(
            f"{what} path {shown!r} {how} outside the manifest folder and the image roots "
            f"({', '.join(str(r) for r in roots)})"
        )
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ReferenceRejected(f"{what} file not found: {shown!r}") from None
    except OSError as exc:
        raise ReferenceRejected(f"{what} file {shown!r} cannot be opened: {_why(exc)}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReferenceRejected(f"{what} path {shown!r} is not a regular file")
        if info.st_size > max_bytes:
            raise ReferenceRejected(
                f"{what} file {shown!r} is {info.st_size} bytes, more than {max_bytes}"
            )
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ReferenceRejected(f"{what} file {shown!r} cannot be read: {_why(exc)}") from None
    if len(data) > max_bytes:  # it grew after the size check
        raise ReferenceRejected(f"{what} file {shown!r} is more than {max_bytes} bytes")
    return resolved, data


def read_sidecar(bundle: Path, roots: list[Path], tile: int | None = None) -> bytes | None:
    """The checked bytes of the sidecar beside the local bundle ``bundle`` (``x.json`` beside
    ``x.png``), or None when there is none.

    A sidecar obeys the rules of the bundle itself (:func:`read_confined`: inside ``roots``,
    a regular file, at most :data:`MAX_SIDECAR_BYTES`) and must be a JSON object whose known
    keys have the right types (:func:`intake.images.check_sidecar`; its ``tile`` must equal
    ``tile`` when given). Raises :class:`ReferenceRejected`.
    """
    sidecar = Path(bundle).with_suffix(".json")
    if not os.path.lexists(sidecar):
        return None
    _, data = read_confined(sidecar.name, "sidecar", sidecar.parent, roots, MAX_SIDECAR_BYTES)
    try:
        check_sidecar(data, tile=tile)
    except ImageRejected as exc:
        raise ReferenceRejected(f"bundle sidecar {sidecar.name!r}: {exc}") from None
    return data


def _bundle_tile(data: bytes) -> int:
    """The tile (pixels) of an accepted bundle: half its height."""
    return read_header_size(data)[2] // 2


def _why(exc: BaseException) -> str:
    """An OS error's reason without the path it repeats (the caller names the path)."""
    return getattr(exc, "strerror", None) or str(exc)


def _checked_sha(data: bytes, ref: str, what: str, ctx: ReferenceContext) -> str:
    if what == "mesh":
        return _checked_mesh_sha(data, ref)
    try:
        if what == "bundle":
            info = check_bundle(data, max_pixels=ctx.max_image_pixels)
        else:
            info = check_image(data, max_pixels=ctx.max_image_pixels)
    except ImageRejected as exc:
        raise ReferenceRejected(f"{what} {redact_url(ref)!r}: {exc}") from None
    return info.sha256


def _checked_mesh_sha(data: bytes, ref: str) -> str:
    """The sha256 of an input mesh that passes :func:`intake.meshes.check_mesh`."""
    from intake.meshes import MeshRejected, check_mesh

    try:
        return check_mesh(data, name=ref).sha256
    except MeshRejected as exc:
        raise ReferenceRejected(f"mesh {ref!r}: {exc}") from None


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to https:// on an allowed host."""

    def __init__(self, hosts: set[str]) -> None:
        self.hosts = hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        parts = urlsplit(newurl)
        if parts.scheme != "https" or (parts.hostname or "").lower() not in self.hosts:
            raise urllib.error.URLError(f"redirect to a disallowed location {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def default_fetcher(
    url_hosts: Iterable[str], max_bytes: int = MAX_IMAGE_BYTES, *, store_url: str | None = None
) -> Fetcher:
    """A fetcher for ``https://`` (allow-listed hosts, redirects included) and ``s3://``.

    ``s3://`` references are read with the client settings of the configured store
    ``store_url`` (``FOUNDRY_STORE_URL``) when it is an S3 store: the store's own client for its
    bucket, the same endpoint and region for other buckets; credentials come from the same AWS
    environment either way. Without an S3 store they use the environment's endpoint
    (``AWS_ENDPOINT_URL``). Objects larger than ``max_bytes`` are refused before download.
    """
    hosts = {h.lower() for h in url_hosts}
    s3 = S3References(store_url)

    def fetch(ref: str) -> bytes:
        if ref.startswith("s3://"):
            return s3.read(ref, max_bytes)
        opener = urllib.request.build_opener(_AllowListRedirects(hosts))
        with opener.open(ref, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"more than {max_bytes} bytes")
        return data

    return fetch


class S3References:
    """Reads ``s3://bucket/key`` references through one store per bucket, opened on first use
    with the configured store's endpoint and region."""

    def __init__(self, store_url: str | None) -> None:
        self.store_url = store_url
        self._buckets: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def read(self, ref: str, max_bytes: int) -> bytes:
        """The bytes of ``ref``; ``ValueError`` when the object is larger than ``max_bytes``."""
        parts = urlsplit(ref)
        bucket = self._bucket(parts.netloc)
        key = parts.path.lstrip("/")
        size = bucket.size(key)
        if size > max_bytes:
            raise ValueError(f"{size} bytes, more than {max_bytes}")
        return bucket.get_bytes(key)

    def _bucket(self, name: str) -> ObjectStore:
        from storage.objects import S3ObjectStore, open_store

        with self._lock:
            if name not in self._buckets:
                configured = (
                    open_store(self.store_url)
                    if self.store_url and self.store_url.startswith("s3://")
                    else None
                )
                if not isinstance(configured, S3ObjectStore):
                    self._buckets[name] = S3ObjectStore(name)
                elif configured.bucket == name and not configured.prefix:
                    self._buckets[name] = configured
                else:
                    self._buckets[name] = S3ObjectStore(
                        name, endpoint_url=configured.endpoint_url, region=configured.region
                    )
            return self._buckets[name]


class FetchedOnce:
    """A fetcher that fetches each remote reference at most once per manifest run.

    Parsing checks and hashes the bytes; ingest then stores the same bytes instead of
    downloading them again. They wait in ``folder`` on disk, not in memory, since a manifest
    may name thousands of images.
    """

    def __init__(self, fetcher: Fetcher, folder: Path) -> None:
        self.fetcher = fetcher
        self.folder = Path(folder)
        self._copies: dict[str, Path] = {}
        self._lock = threading.Lock()

    def __call__(self, ref: str) -> bytes:
        return self.local_copy(ref).read_bytes()

    def local_copy(self, ref: str) -> Path:
        """The file holding ``ref``'s bytes, fetched now unless an earlier call did."""
        with self._lock:
            path = self._copies.get(ref)
        if path is not None:
            return path
        data = self.fetcher(ref)
        with self._lock:
            path = self._copies.get(ref)
            if path is None:
                path = self.folder / f"{len(self._copies):08d}"
                path.write_bytes(data)
                self._copies[ref] = path
        return path

    @property
    def fetched(self) -> int:
        """How many distinct references were downloaded."""
        with self._lock:
            return len(self._copies)
