"""Image-to-3D with Kiss3DGen (generator ``kiss3dgen-image``).

1. The reference picture's object is separated from its background
   (:mod:`models.generate.background`: alpha, a local matting model, or a plain-border flood),
   cropped, centred and padded on white.
2. A **coarse bundle** gives the layout: the user's ``bundle`` when the request has one, else
   the mesh library's best match for the segmented object (silhouette and colour against the
   library renders at 4 azimuths) rendered with Kiss3DGen's cameras. (Kiss3DGen itself draws
   the coarse bundle with Zero123++ and an LRM; without multi-view weights the library stands
   in.)
3. Flux + LoRA re-draws the coarse bundle (img2img at ``strength`` 0.95) with the
   ControlNet-Union in tile mode on it (weight 0.6 over the first 65 % of the steps) and the
   centred picture as a **Redux** image prompt appended to the caption's T5 tokens: Kiss3DGen's
   image-to-3D settings. The caption is the request's prompt, else the library match's.

Every weights path (Flux, LoRA, ControlNet, Redux) is checked before any work, and one error
names each missing one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.bundle.spec import Bundle, BundleSpec
from models.generate.background import OBJECT_FRACTION, Segmented, centre_object
from models.generate.kiss3dgen.conditioned import (
    ConditionedParams,
    ImagePrompt,
    check_conditioned_weights,
    generate_conditioned,
    params_for_request,
)
from models.generate.kiss3dgen.params import KISS3DGEN_DISTANCE, Kiss3DGenParamsError

if TYPE_CHECKING:
    from models.generate.kiss3dgen.generate import GeneratedBundle

#: Caption when the request has no prompt and the coarse bundle carries none.
FALLBACK_CAPTION = "an object"


@dataclass(frozen=True)
class ImageToBundleParams(ConditionedParams):
    """Params of ``kiss3dgen-image``; every field is a manifest ``params`` key."""

    redux_path: Path | None = None
    """Local Flux Redux folder (``black-forest-labs/FLUX.1-Redux-dev`` layout)."""
    use_redux: bool = True
    """Give the reference picture to Flux as a Redux image prompt."""
    redux_prompt_embeds_scale: float = 1.0
    """Scale of the caption + image tokens (Redux's ``prompt_embeds_scale``)."""
    redux_pooled_prompt_embeds_scale: float = 1.0
    """Scale of the pooled CLIP embedding (Redux's ``pooled_prompt_embeds_scale``)."""
    matting_path: Path | None = None
    """Local TorchScript matting model for pictures without alpha or a plain backdrop."""
    object_fraction: float = OBJECT_FRACTION
    """Share of the centred picture's side the object's longer side fills."""
    reference_size: int = 512
    """Side of the centred picture given to Redux, in pixels."""

    @classmethod
    def generator_name(cls) -> str:
        return "kiss3dgen-image"

    def check(self) -> None:
        super().check()
        if not 0 < self.object_fraction <= 1:
            raise Kiss3DGenParamsError(
                f"object_fraction must be in (0, 1], got {self.object_fraction}"
            )
        if self.reference_size < 32:
            raise Kiss3DGenParamsError(
                f"reference_size must be at least 32, got {self.reference_size}"
            )


@dataclass
class ImageToBundle:
    """What :func:`image_to_bundle` made: the ``generated`` bundle
    (:class:`models.generate.kiss3dgen.generate.GeneratedBundle`), the ``coarse`` bundle it
    started from, and the centred ``reference`` picture ``(S, S, 3)`` uint8 with its mask."""

    generated: GeneratedBundle
    coarse: Bundle
    reference: np.ndarray
    reference_mask: np.ndarray


def coarse_bundle_from_library(index, segmented: Segmented, tile: int) -> tuple[Bundle, dict]:
    """The library's best match for the segmented object, rendered with Kiss3DGen's cameras.

    ``index``: a :class:`models.library.index.LibraryIndex` with rendered views. Returns the
    bundle (sidecar ``extra``: ``library_id``, ``library_similarity``, ``caption``) and a match
    record. Raises :class:`models.library.format.LibraryError` when nothing can be matched.
    """
    from models.geometry.mesh import load_mesh
    from models.library.index import retrieve
    from models.render.views import render_bundle

    match, how = retrieve(index, image=segmented.rgba)
    entry = match.entry
    bundle = render_bundle(
        load_mesh(match.mesh_path),
        spec=BundleSpec(tile=tile, distance=KISS3DGEN_DISTANCE),
        up=entry.up,
    )
    extra = dict(bundle.spec.extra)
    extra.update(library_id=entry.id, library_similarity=round(match.similarity, 6),
                 caption=entry.caption)
    bundle.spec = replace(bundle.spec, extra=extra)
    record = {"id": entry.id, "caption": entry.caption, "similarity": match.similarity,
              "by": how, "view": match.view, "path": entry.path, "licence": entry.licence}
    return bundle, record


def coarse_bundle_from_file(path: str | Path, tile: int) -> Bundle:
    """A user-supplied coarse bundle, resized (bilinear) to ``tile`` when it is another size."""
    from PIL import Image

    bundle = Bundle.load(path)
    if bundle.tile == tile:
        return bundle
    image = np.asarray(
        Image.fromarray(bundle.image).resize((4 * tile, 2 * tile), Image.Resampling.BILINEAR)
    )
    return Bundle(image=image.copy(), spec=replace(bundle.spec, tile=tile))


def image_to_bundle(
    segmented: Segmented,
    coarse: Bundle,
    caption: str,
    seed: int,
    params: ImageToBundleParams,
) -> ImageToBundle:
    """Refine ``coarse`` into the bundle of the object in ``segmented``.

    ``coarse`` must be at the params' tile. The object is centred on white at
    ``params.reference_size`` and given to Redux (when ``params.use_redux``). The new bundle's
    sidecar keeps the coarse bundle's geometry fields (scale, offset) and records
    ``strength``, ``controlnet_conditioning_scale`` and ``redux``.
    """
    params.check()
    if coarse.tile != params.tile:
        raise ValueError(f"coarse bundle tile {coarse.tile} != params tile {params.tile}")
    check_conditioned_weights(params, redux_path=params.redux_path, need_redux=params.use_redux)
    reference, reference_mask = centre_object(
        segmented, size=params.reference_size, object_fraction=params.object_fraction
    )
    image_prompt = None
    if params.use_redux:
        image_prompt = ImagePrompt(
            image=reference,
            redux_path=Path(params.redux_path),
            prompt_embeds_scale=params.redux_prompt_embeds_scale,
            pooled_scale=params.redux_pooled_prompt_embeds_scale,
        )
    generated = generate_conditioned(caption, seed, params, coarse.image, image_prompt)
    extra = dict(generated.bundle.spec.extra)
    extra.update(
        strength=params.strength,
        controlnet_conditioning_scale=(
            params.controlnet_conditioning_scale if params.use_controlnet else None
        ),
        redux=params.use_redux,
        background=segmented.method,
    )
    generated.bundle.spec = replace(
        coarse.spec, producer=generated.bundle.spec.producer,
        distance=generated.bundle.spec.distance, extra=extra,
    )
    return ImageToBundle(generated=generated, coarse=coarse, reference=reference,
                         reference_mask=reference_mask)


def generate_from_image(request, context):
    """The ``kiss3dgen-image`` entry of :data:`models.generate.registry.GENERATORS`.

    Needs ``request.image``; the coarse bundle is ``request.bundle_path`` when given, else the
    library's best match (``context.library_path``). Returns
    :class:`models.generate.base.Generated` with metrics ``kiss3dgen_seconds``,
    ``foreground_fraction`` (and ``library_similarity``), ``match`` the library record.
    """
    from models.bundle.spec import BundleError
    from models.generate.background import BackgroundError, remove_background
    from models.generate.base import Generated, GeneratorInputError
    from models.library.format import LibraryError

    params = params_for_request(ImageToBundleParams, request, context)
    if request.image is None:
        raise GeneratorInputError("the kiss3dgen-image generator needs a reference image")
    check_conditioned_weights(params, redux_path=params.redux_path, need_redux=params.use_redux)
    try:
        segmented = remove_background(request.image, matting_path=params.matting_path)
    except BackgroundError as exc:
        raise GeneratorInputError(str(exc)) from exc

    match = None
    try:
        if request.bundle_path is not None:
            coarse = coarse_bundle_from_file(request.bundle_path, params.tile)
        elif context.library_path is not None:
            from models.library.index import LibraryIndex

            coarse, match = coarse_bundle_from_library(
                LibraryIndex.cached(context.library_path), segmented, params.tile
            )
        else:
            raise GeneratorInputError(
                "the kiss3dgen-image generator needs a coarse bundle: a mesh library "
                "(FOUNDRY_LIBRARY_PATH) or `bundle: PATH` in the manifest"
            )
    except (LibraryError, BundleError) as exc:
        raise GeneratorInputError(f"coarse bundle: {exc}") from exc

    caption = (request.prompt or "").strip() or coarse.spec.extra.get("caption") or FALLBACK_CAPTION
    out = image_to_bundle(segmented, coarse, caption, request.seed, params)
    g = out.generated
    metrics = {
        "kiss3dgen_seconds": round(g.seconds, 4),
        "foreground_fraction": round(float(g.masks.mean()), 6),
    }
    if match is not None:
        metrics["library_similarity"] = match["similarity"]
    return Generated(bundle=g.bundle, metrics=metrics, match=match)
