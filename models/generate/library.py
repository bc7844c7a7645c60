"""The ``library`` generator: retrieve the nearest captioned mesh and render its bundle
(Retrieve-and-Generate's retrieval step; needs no weights)."""

from __future__ import annotations

from dataclasses import replace

from models.generate.base import Generated, GenerationRequest, GeneratorInputError
from models.geometry.mesh import load_mesh
from models.library.format import LibraryError
from models.library.index import LibraryIndex, retrieve
from models.render.views import render_bundle


def retrieve_and_render(index: LibraryIndex, request: GenerationRequest) -> Generated:
    """The ``library`` generator: retrieve the nearest mesh and render its bundle.

    The request's ``prompt`` (nearest caption) or ``image`` (nearest view descriptor) picks
    the entry; ``params["library_id"]`` names one directly. The bundle is rendered at
    ``request.tile``; its sidecar ``extra`` records ``library_mesh`` (the entry's path as
    written, relative to the library folder unless absolute), ``source_up``, ``library_id`` and
    ``library_similarity``. Metrics: ``library_similarity``. Raises
    :class:`models.generate.base.GeneratorInputError` for requests it cannot serve.
    """

    try:
        match, how = retrieve(
            index,
            prompt=request.prompt,
            image=request.image,
            entry_id=request.params.get("library_id"),
        )
    except LibraryError as exc:
        raise GeneratorInputError(str(exc)) from exc
    entry = match.entry
    if not match.mesh_path.is_file():
        raise GeneratorInputError(
            f"library entry {entry.id!r}: mesh file not found: {match.mesh_path}"
        )

    bundle = render_bundle(load_mesh(match.mesh_path), tile=request.tile, up=entry.up)
    extra = dict(bundle.spec.extra)
    extra.update(
        library_mesh=entry.path,
        source_up=entry.up,
        library_id=entry.id,
        library_similarity=round(match.similarity, 6),
    )
    bundle.spec = replace(bundle.spec, producer="foundry3d.library", extra=extra)
    record = {
        "id": entry.id,
        "caption": entry.caption,
        "similarity": match.similarity,
        "by": how,
        "view": match.view,
        "path": entry.path,
        "up": entry.up,
        "licence": entry.licence,
        "tags": list(entry.tags),
    }
    return Generated(
        bundle=bundle, metrics={"library_similarity": match.similarity}, match=record
    )
