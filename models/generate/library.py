"""The ``library`` generator: retrieve the nearest captioned mesh and render its bundle
(Retrieve-and-Generate's retrieval step; needs no weights)."""

from __future__ import annotations

from dataclasses import replace

from models.generate.base import Generated, GenerationRequest, GeneratorInputError
from models.geometry.mesh import load_mesh
from models.library.format import LibraryError
from models.library.index import LibraryIndex, LibraryMatch, retrieve
from models.render.views import render_bundle

#: Cosine similarities between a prompt and the best library caption (all-MiniLM-L6-v2),
#: calibrated by ``benchmarks/retrieval.py`` on paraphrases of library objects and prompts for
#: objects the library does not hold: below ``reject`` nothing in the library is the object
#: asked for; from ``reject`` up to ``weak`` the match is shown as weak, to be reviewed.
MATCH_THRESHOLDS = {"reject": 0.55, "weak": 0.65}


def segmented_query(image, matting_path=None):
    """The reference image as an ``(H, W, 4)`` RGBA query whose alpha is its object
    (:func:`models.generate.background.remove_background`); bad images raise
    :class:`models.generate.base.GeneratorInputError`."""
    from models.generate.background import BackgroundError, remove_background

    try:
        return remove_background(image, matting_path=matting_path).rgba
    except BackgroundError as exc:
        raise GeneratorInputError(str(exc)) from exc


def retrieve_and_render(index: LibraryIndex, request: GenerationRequest) -> Generated:
    """The ``library`` generator: retrieve the nearest mesh and render its bundle.

    The request's ``prompt`` (nearest caption) or ``image`` (its object, background removed by
    :func:`segmented_query`, against the library renders' silhouette and colour at 4 azimuths)
    picks the entry; ``params["library_id"]`` names one directly. The bundle is rendered at
    ``request.tile``; its sidecar ``extra`` records ``library_mesh`` (the entry's path as
    written, relative to the library folder unless absolute), ``source_up``, ``library_id`` and
    ``library_similarity``. A text match below ``MATCH_THRESHOLDS["reject"]`` is refused; one
    below ``MATCH_THRESHOLDS["weak"]`` is recorded as weak (``match["weak"]``, metric
    ``library_match_weak`` 1). Metrics: ``library_similarity``, ``library_match_weak``. Raises
    :class:`models.generate.base.GeneratorInputError` for requests it cannot serve.
    """

    image = request.image
    if image is not None and not (request.prompt or request.params.get("library_id")):
        image = segmented_query(image, request.params.get("matting_path"))
    try:
        match, how = retrieve(
            index,
            prompt=request.prompt,
            image=image,
            entry_id=request.params.get("library_id"),
        )
    except LibraryError as exc:
        raise GeneratorInputError(str(exc)) from exc
    entry = match.entry
    weak = how == "text" and _judge_text_match(request.prompt or "", match)
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
        "weak": weak,
    }
    metrics = {"library_similarity": match.similarity, "library_match_weak": float(weak)}
    return Generated(bundle=bundle, metrics=metrics, match=record)


def _judge_text_match(prompt: str, match: LibraryMatch) -> bool:
    """Whether a text match is weak; raises :class:`GeneratorInputError` (permanent) when the
    library holds nothing like the prompt, rather than passing off the nearest mesh as it."""
    if match.similarity < MATCH_THRESHOLDS["reject"]:
        raise GeneratorInputError(
            f"no library mesh matches {prompt!r} (best: {match.entry.caption!r} "
            f"{match.similarity:.2f} < {MATCH_THRESHOLDS['reject']:.2f}); add meshes with "
            "`foundry3d library build` or use the kiss3dgen generator"
        )
    return match.similarity < MATCH_THRESHOLDS["weak"]
