"""The captioned mesh library and its index: Retrieve-and-Generate's retrieval step.

A library is a folder holding meshes and a ``library.jsonl``, one JSON object per line::

    {"id": "ycb-025_mug", "path": "meshes/ycb/025_mug.stl", "caption": "a mug with a handle",
     "tags": ["kitchen"], "up": "z", "licence": "YCB object set, CC BY 4.0"}

``path`` is relative to the folder (or absolute); ``up`` is the axis of the mesh file that
points up (``y`` or ``z``, default ``y``); ``tags`` and ``licence`` are optional.

:func:`build_library_index` embeds every caption (all-MiniLM-L6-v2, ``(N, 384)`` float32 unit
rows) and renders each mesh's bundle to describe its 4 colour views with
:func:`models.embed.image.image_descriptor` (``(N, 4, D)`` float32 unit rows). It writes
``index.npz`` (the arrays) and ``index.json`` (entries, content keys, model identities) beside
``library.jsonl``; a rebuild re-embeds only changed captions and re-renders only changed meshes.
:class:`LibraryIndex` answers nearest-neighbour queries by cosine similarity, and
:func:`retrieve_and_render` is the ``library`` generator's body.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from models.cache import ModelKey, get_or_load
from models.embed.image import DEFAULT_CONFIG, DescriptorError, image_descriptor
from models.library.format import (
    LIBRARY_FILE,
    LibraryEntry,
    LibraryError,
    _atomic_write,
    parse_library_line,
    read_library_jsonl,
    resolve_mesh_path,
)

if TYPE_CHECKING:
    from models.bundle.spec import Bundle

INDEX_ARRAYS = "index.npz"
INDEX_META = "index.json"
INDEX_FORMAT = "foundry3d-library-index-v1"
#: Kind of the loaded indexes in :mod:`models.cache`.
CACHE_KIND = "library-index"
#: Tile size of the renders whose views are described; small, descriptors are coarse anyway.
DEFAULT_INDEX_TILE = 256
NUM_VIEWS = 4
#: Supersampling of index renders (part of each entry's content key).
INDEX_SUPERSAMPLE = 1


class TextEncoder(Protocol):
    """What indexing needs from a text embedder (:class:`models.embed.text.TextEmbedder`)."""

    @property
    def identity(self) -> str: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class LibraryMatch:
    """A retrieved entry and how close it is to the query."""

    entry: LibraryEntry
    similarity: float
    """Cosine similarity in [-1, 1] (embeddings and descriptors are unit vectors)."""
    mesh_path: Path
    """The entry's mesh file, resolved against the library folder."""
    view: int | None = None
    """For image queries: which rendered view (0 front, 1..3 by azimuth) matched best."""


@dataclass(frozen=True)
class LibraryBuildReport:
    """What a build did."""

    total: int
    """Entries in the index."""
    embedded: int
    """Captions embedded by this build (the rest were unchanged)."""
    rendered: int
    """Meshes rendered and described by this build (the rest were unchanged or not rendered)."""
    unchanged: int
    """Entries this build neither embedded nor rendered (everything reused)."""
    seconds: float
    """Wall time of the build."""


ProgressFn = Callable[[int, int, str, str], None]
"""``progress(done, total, entry_id, action)``; action is ``rendered``, ``unchanged`` or
``not-rendered``; called once per entry, in library order."""


# --------------------------------------------------------------------------- library.jsonl


# --------------------------------------------------------------------------- the index


@dataclass
class LibraryIndex:
    """A library's entries with their caption embeddings and view descriptors.

    ``caption_embeddings``: ``(N, 384)`` float32 unit rows, in entry order.
    ``descriptors``: ``(N, 4, D)`` float32 unit rows of the 4 rendered colour views (0 front,
    then azimuths 90, 180, 270); rows of entries that were not rendered are 0.
    ``has_views``: ``(N,)`` bool, True where ``descriptors`` holds real views.
    """

    folder: Path
    entries: list[LibraryEntry]
    caption_embeddings: np.ndarray
    descriptors: np.ndarray
    has_views: np.ndarray
    embedder: str
    """Identity of the text embedder that made ``caption_embeddings``."""
    descriptor_version: str
    """Layout of ``descriptors`` (:attr:`models.embed.image.DescriptorConfig.version`)."""
    tile: int
    """Tile size of the renders the descriptors were computed from."""
    library_sha: str = ""
    """SHA-256 of the ``library.jsonl`` the index was built from."""
    report: LibraryBuildReport | None = None
    """Set by :func:`build_library_index`; None for a loaded index."""
    _keys: list[dict[str, str]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def stale(self) -> bool:
        """True when ``library.jsonl`` changed since the index was built (rebuild it)."""
        lib = self.folder / LIBRARY_FILE
        return not lib.is_file() or _sha256_file(lib) != self.library_sha

    def get(self, entry_id: str) -> LibraryEntry:
        """The entry called ``entry_id``; :class:`LibraryError` if there is none."""
        for entry in self.entries:
            if entry.id == entry_id:
                return entry
        raise LibraryError(f"library {self.folder} has no entry {entry_id!r}")

    def mesh_path(self, entry: LibraryEntry) -> Path:
        """The entry's mesh file, resolved against the library folder."""
        return resolve_mesh_path(self.folder, entry)

    def query_text(self, embedding: np.ndarray, k: int = 1) -> list[LibraryMatch]:
        """Entries nearest to a text embedding ``(384,)`` float32, best first (at most ``k``).

        The similarity is the cosine between the query and each caption embedding.
        """
        q = _unit_query(embedding, self.caption_embeddings.shape[1], "text embedding")
        scores = self.caption_embeddings @ q
        return self._top(scores, k, views=None)

    def query_image(
        self, descriptor: np.ndarray, k: int = 1, *, front_only: bool = False
    ) -> list[LibraryMatch]:
        """Entries nearest to an image descriptor ``(D,)`` float32, best first (at most ``k``).

        An entry's similarity is the best cosine over its 4 rendered views (only view 0 with
        ``front_only``); :attr:`LibraryMatch.view` says which view won. Entries without
        rendered views are never returned; an index with none raises :class:`LibraryError`.
        """
        if not self.has_views.any():
            raise LibraryError(
                f"the index of {self.folder} has no rendered views; rebuild it with rendering "
                "on to query by image"
            )
        q = _unit_query(descriptor, self.descriptors.shape[2], "image descriptor")
        per_view = self.descriptors @ q  # (N, 4)
        if front_only:
            per_view = per_view[:, :1]
        views = per_view.argmax(axis=1)
        scores = per_view.max(axis=1)
        scores = np.where(self.has_views, scores, -np.inf)
        return self._top(scores, k, views=views)

    def _top(self, scores: np.ndarray, k: int, views: np.ndarray | None) -> list[LibraryMatch]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        # Stable sort on -score keeps library order among ties: deterministic answers.
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            LibraryMatch(
                entry=self.entries[i],
                similarity=float(scores[i]),
                mesh_path=self.mesh_path(self.entries[i]),
                view=None if views is None else int(views[i]),
            )
            for i in order
            if np.isfinite(scores[i])
        ]

    # ------------------------------------------------------------------ persistence

    @classmethod
    def load(cls, folder: str | Path) -> LibraryIndex:
        """Read ``index.json`` + ``index.npz`` from ``folder``.

        Raises :class:`LibraryError` naming the command to run when there is no index.
        """
        folder = Path(folder)
        meta_path, arrays_path = folder / INDEX_META, folder / INDEX_ARRAYS
        if not meta_path.is_file() or not arrays_path.is_file():
            raise LibraryError(
                f"the library at {folder} is not indexed; run `foundry3d library build {folder}`"
                + ("" if (folder / LIBRARY_FILE).is_file() else f" (it has no {LIBRARY_FILE})")
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            with np.load(arrays_path, allow_pickle=False) as arrays:
                captions = np.asarray(arrays["caption_embeddings"], dtype=np.float32)
                descriptors = np.asarray(arrays["descriptors"], dtype=np.float32)
                has_views = np.asarray(arrays["has_views"], dtype=bool)
        except (OSError, ValueError, KeyError) as exc:
            raise LibraryError(f"the index of {folder} is unreadable ({exc}); rebuild it") from exc
        if meta.get("format") != INDEX_FORMAT:
            raise LibraryError(
                f"the index of {folder} has format {meta.get('format')!r}, expected "
                f"{INDEX_FORMAT!r}; rebuild it"
            )
        rows = meta["entries"]
        entries = [parse_library_line(json.dumps(r["entry"])) for r in rows]
        if not (len(entries) == len(captions) == len(descriptors) == len(has_views)):
            raise LibraryError(f"the index of {folder} is inconsistent; rebuild it")
        return cls(
            folder=folder,
            entries=entries,
            caption_embeddings=captions,
            descriptors=descriptors,
            has_views=has_views,
            embedder=meta["embedder"],
            descriptor_version=meta["descriptor_version"],
            tile=int(meta["tile"]),
            library_sha=meta.get("library_sha", ""),
            _keys=[r["keys"] for r in rows],
        )

    @classmethod
    def cached(cls, folder: str | Path) -> LibraryIndex:
        """:meth:`load` once per process; reloaded when the index files change on disk."""
        folder = Path(folder).resolve()
        stamp = tuple(
            (p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None
            for p in (folder / INDEX_META, folder / INDEX_ARRAYS)
        )
        return get_or_load(ModelKey(CACHE_KIND, (str(folder),), stamp), lambda: cls.load(folder))

    def save(self) -> None:
        """Write ``index.npz`` then ``index.json`` (each atomically) into :attr:`folder`."""
        meta = {
            "format": INDEX_FORMAT,
            "embedder": self.embedder,
            "descriptor_version": self.descriptor_version,
            "tile": self.tile,
            "library_sha": self.library_sha,
            "entries": [
                {"entry": e.to_json(), "keys": keys}
                for e, keys in zip(self.entries, self._keys, strict=True)
            ],
        }
        with tempfile.NamedTemporaryFile(
            dir=self.folder, prefix=".index-", suffix=".npz", delete=False
        ) as tmp:
            np.savez(
                tmp,
                caption_embeddings=self.caption_embeddings.astype(np.float32),
                descriptors=self.descriptors.astype(np.float32),
                has_views=self.has_views.astype(bool),
            )
        os.chmod(tmp.name, 0o644)
        os.replace(tmp.name, self.folder / INDEX_ARRAYS)
        _atomic_write(self.folder / INDEX_META, json.dumps(meta, indent=1).encode("utf-8"))


def build_library_index(
    folder: str | Path,
    *,
    embedder: TextEncoder,
    render: bool = True,
    tile: int = DEFAULT_INDEX_TILE,
    progress: ProgressFn | None = None,
) -> LibraryIndex:
    """Index the library in ``folder`` and save ``index.npz`` + ``index.json`` beside it.

    Captions are embedded with ``embedder``; with ``render`` each mesh is loaded
    (:func:`models.geometry.mesh.load_mesh`), rendered at ``tile`` pixels
    (:func:`models.render.views.
    render_bundle`, its ``up`` axis from the entry) and its 4 colour views described
    (:func:`models.embed.image.image_descriptor`, with the bundle's masks). Work already in the
    previous index is reused: a caption is re-embedded only when it (or the embedder) changed,
    a mesh re-rendered only when its file content, up axis, ``tile`` or the descriptor layout
    changed. Raises :class:`LibraryError` naming the entry for a missing or unreadable mesh.
    """
    started = time.perf_counter()
    folder = Path(folder)
    library_file = folder / LIBRARY_FILE
    entries = read_library_jsonl(library_file)
    if not entries:
        raise LibraryError(f"{library_file} lists no meshes")
    previous = _previous_index(folder)
    old_rows = {e.id: i for i, e in enumerate(previous.entries)} if previous else {}

    # 1. Content keys: what each entry's embedding and views depend on.
    keys = []
    for entry in entries:
        mesh = resolve_mesh_path(folder, entry)
        if not mesh.is_file():
            raise LibraryError(f"library entry {entry.id!r}: mesh file not found: {mesh}")
        mesh_sha = _sha256_file(mesh)
        keys.append(
            {
                "mesh_sha": mesh_sha,
                "caption": _sha256_text(embedder.identity, entry.caption),
                "views": _sha256_text(
                    mesh_sha, entry.up, str(tile), DEFAULT_CONFIG.version, _renderer_tag()
                ),
            }
        )

    # 2. Caption embeddings: reuse unchanged ones, embed the rest in one batch.
    n = len(entries)
    captions = np.zeros((n, _embedding_width(previous)), dtype=np.float32)
    to_embed = []
    for i, (entry, key) in enumerate(zip(entries, keys, strict=True)):
        j = old_rows.get(entry.id)
        if j is not None and previous._keys[j].get("caption") == key["caption"]:
            captions[i] = previous.caption_embeddings[j]
        else:
            to_embed.append(i)
    if to_embed:
        fresh = np.asarray(embedder.embed_texts([entries[i].caption for i in to_embed]))
        if fresh.shape[1] != captions.shape[1]:
            captions = np.zeros((n, fresh.shape[1]), dtype=np.float32)
            to_embed = list(range(n))
            fresh = np.asarray(embedder.embed_texts([e.caption for e in entries]))
        captions[to_embed] = fresh

    # 3. View descriptors: reuse unchanged ones, render and describe the rest.
    descriptors = np.zeros((n, NUM_VIEWS, DEFAULT_CONFIG.length), dtype=np.float32)
    has_views = np.zeros(n, dtype=bool)
    rendered = unchanged = 0
    embedded = set(to_embed)
    for i, (entry, key) in enumerate(zip(entries, keys, strict=True)):
        j = old_rows.get(entry.id)
        reusable = (
            j is not None
            and previous.has_views[j]
            and previous._keys[j].get("views") == key["views"]
            and previous.descriptors.shape[2] == DEFAULT_CONFIG.length
        )
        if reusable:
            descriptors[i] = previous.descriptors[j]
            has_views[i] = True
            action = "unchanged"
        elif render:
            descriptors[i] = describe_mesh_views(
                resolve_mesh_path(folder, entry), up=entry.up, tile=tile, entry_id=entry.id
            )
            has_views[i] = True
            rendered += 1
            action = "rendered"
        else:
            action = "not-rendered"
        if action != "rendered" and i not in embedded:
            unchanged += 1
        if progress is not None:
            progress(i + 1, n, entry.id, action)

    index = LibraryIndex(
        folder=folder,
        entries=entries,
        caption_embeddings=captions,
        descriptors=descriptors,
        has_views=has_views,
        embedder=embedder.identity,
        descriptor_version=DEFAULT_CONFIG.version,
        tile=tile,
        library_sha=_sha256_file(library_file),
        _keys=keys,
    )
    index.save()
    index.report = LibraryBuildReport(
        total=n,
        embedded=len(to_embed),
        rendered=rendered,
        unchanged=unchanged,
        seconds=time.perf_counter() - started,
    )
    return index


def describe_mesh_views(
    mesh_path: str | Path, *, up: str = "y", tile: int = DEFAULT_INDEX_TILE, entry_id: str = ""
) -> np.ndarray:
    """Render a mesh file's bundle and describe its 4 colour views -> ``(4, D)`` float32."""
    from models.geometry.mesh import load_mesh
    from models.render.views import render_bundle

    name = f"library entry {entry_id!r}" if entry_id else f"mesh {mesh_path}"
    try:
        mesh = load_mesh(mesh_path)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise LibraryError(f"{name}: cannot read mesh {mesh_path}: {exc}") from exc
    # No supersampling: descriptors are far coarser than a pixel, so it would only cost time.
    bundle = render_bundle(mesh, tile=tile, up=up, supersample=INDEX_SUPERSAMPLE)
    return describe_bundle_views(bundle, name=name)


def describe_bundle_views(bundle: Bundle, name: str = "bundle") -> np.ndarray:
    """The descriptors of a bundle's 4 colour views, masked by its normal tiles: ``(4, D)``."""
    colours, masks = bundle.colour_tiles(), bundle.masks()
    out = np.zeros((NUM_VIEWS, DEFAULT_CONFIG.length), dtype=np.float32)
    for v in range(NUM_VIEWS):
        try:
            out[v] = image_descriptor(colours[v], mask=masks[v])
        except DescriptorError as exc:
            raise LibraryError(f"{name}: view {v} of its render is empty ({exc})") from exc
    return out


# --------------------------------------------------------------------------- the generator


def retrieve(
    index: LibraryIndex,
    *,
    prompt: str | None = None,
    image: np.ndarray | None = None,
    entry_id: str | None = None,
) -> tuple[LibraryMatch, str]:
    """The best entry for a prompt, an image or an explicit id -> ``(match, how)``.

    ``how`` is ``id``, ``text`` or ``image``. ``image``: ``(H, W, 3)`` uint8 on white (or
    ``(H, W, 4)`` with alpha). A prompt wins over an image when both are given.
    """
    if entry_id is not None:
        entry = index.get(entry_id)
        return LibraryMatch(entry, 1.0, index.mesh_path(entry)), "id"
    if prompt:
        from models.embed.text import get_text_embedder

        embedder = get_text_embedder()
        if embedder.identity != index.embedder:
            raise LibraryError(
                f"the index of {index.folder} was built with {index.embedder}, not "
                f"{embedder.identity}; rebuild it"
            )
        return index.query_text(embedder.embed_text(prompt), k=1)[0], "text"
    if image is not None:
        if index.descriptor_version != DEFAULT_CONFIG.version:
            raise LibraryError(
                f"the index of {index.folder} holds {index.descriptor_version} descriptors, not "
                f"{DEFAULT_CONFIG.version}; rebuild it"
            )
        try:
            descriptor = image_descriptor(image)
        except DescriptorError as exc:
            raise LibraryError(f"reference image: {exc}") from exc
        return index.query_image(descriptor, k=1)[0], "image"
    raise LibraryError("a library query needs a prompt, an image or an entry id")


# --------------------------------------------------------------------------- helpers


def _previous_index(folder: Path) -> LibraryIndex | None:
    """The index already in ``folder``, or None when absent or unreadable (rebuild all)."""
    try:
        return LibraryIndex.load(folder)
    except (LibraryError, KeyError, TypeError):
        return None


def _embedding_width(previous: LibraryIndex | None) -> int:
    return previous.caption_embeddings.shape[1] if previous is not None else 384


def _renderer_tag() -> str:
    """Names the renderer's output version if it declares one, so new renders invalidate."""
    try:
        import models.render.views as render
    except ImportError:
        return "none"
    return f'{getattr(render, "RENDER_VERSION", "1")}:ss{INDEX_SUPERSAMPLE}'


def _unit_query(vector: np.ndarray, width: int, what: str) -> np.ndarray:
    q = np.asarray(vector, dtype=np.float32).reshape(-1)
    if q.shape[0] != width:
        raise LibraryError(f"{what} has {q.shape[0]} values, the index holds {width}")
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm == 0.0:
        raise LibraryError(f"{what} is zero or not finite")
    return q / norm


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_text(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


