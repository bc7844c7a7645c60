"""Image-to-3D with Kiss3DGen (generator ``kiss3dgen-image``).

1. The reference picture's object is separated from its background
   (:mod:`models.generate.background`: alpha, a local matting model, or a plain-border flood),
   cropped, centred and padded on white.
2. A **coarse bundle** gives the layout: the user's ``bundle`` when the request has one; else,
   when a Zero123++ folder is configured, Kiss3DGen's own way: Zero123++'s six views of the
   centred object reconstructed by the LRM and rendered with Kiss3DGen's cameras
   (:mod:`models.generate.kiss3dgen.multiview`); else the mesh library's best match for the
   segmented object (silhouette and colour against the library renders at 4 azimuths).
3. Flux + LoRA re-draws the coarse bundle (img2img at ``strength`` 0.95) with the
   ControlNet-Union in tile mode on it (weight 0.6 over the first 65 % of the steps) and the
   centred picture as a **Redux** image prompt appended to the caption's T5 tokens: Kiss3DGen's
   image-to-3D settings. The caption is the request's prompt, else the captioning model's
   caption of the centred picture (when ``caption_path`` is set, as Kiss3DGen captions with
   Florence-2), else the library match's.

Every weights path (Flux, LoRA, ControlNet, Redux, and Zero123++ and the LRM when they are
used) is checked before any work, and one error names each missing one.
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
    """Side of the centred picture given to Redux (and Zero123++), in pixels."""
    zero123_path: Path | None = None
    """Local Zero123++ folder (``sudo-ai/zero123plus-v1.2`` layout; ``FOUNDRY_ZERO123_PATH``).
    When set, the coarse bundle is Zero123++'s six views reconstructed by the LRM at
    ``coarse_lrm_path`` (Kiss3DGen's way) instead of the library's best match."""
    coarse_lrm_path: Path | None = None
    """LRM checkpoint that reconstructs Zero123++'s views (``FOUNDRY_LRM_PATH``)."""
    coarse_lrm_variant: str = "prm"
    """Architecture of that checkpoint: ``prm`` (Kiss3DGen's), ``instant-mesh-large``,
    ``instant-mesh-base`` (``FOUNDRY_LRM_VARIANT``)."""
    zero123_steps: int = 75
    """Zero123++ denoising steps (Euler ancestral; the release recommends 75)."""
    zero123_guidance: float = 4.0
    """Zero123++ classifier-free guidance scale (1 switches guidance off)."""

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
        from models.reconstruct.lrm.config import CONFIGS

        if self.coarse_lrm_variant not in CONFIGS:
            raise Kiss3DGenParamsError(f"coarse_lrm_variant must be one of {sorted(CONFIGS)}, "
                                       f"got {self.coarse_lrm_variant!r}")
        steps = self.zero123_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise Kiss3DGenParamsError(f"zero123_steps must be an integer in [1, 1000], got "
                                       f"{steps!r}")
        if not 0 <= self.zero123_guidance <= 100:
            raise Kiss3DGenParamsError(
                f"zero123_guidance must be in [0, 100], got {self.zero123_guidance}"
            )

    @property
    def multiview(self) -> bool:
        """True when the coarse bundle comes from Zero123++ + the LRM."""
        return self.zero123_path is not None


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


def check_image_weights(params: ImageToBundleParams, multiview: bool,
                        caption: bool = False) -> None:
    """Raise one ``WeightsMissingError`` naming every missing path of this generation: Flux,
    LoRA, ControlNet and Redux when used, with ``multiview`` the Zero123++ folder and the LRM
    checkpoint, with ``caption`` the captioning model."""
    from models.generate.kiss3dgen.caption import check_caption_folder
    from models.generate.kiss3dgen.weights import WeightsMissingError
    from models.generate.kiss3dgen.zero123plus import check_zero123plus_folder

    def check_lrm_file() -> None:
        lrm = params.coarse_lrm_path
        if lrm is None or not Path(lrm).is_file():
            raise WeightsMissingError(
                lrm, f"an LRM checkpoint file ({params.coarse_lrm_variant})",
                "set FOUNDRY_LRM_PATH or params.coarse_lrm_path" if lrm is None
                else "the file does not exist")

    checks = [lambda: check_conditioned_weights(params, redux_path=params.redux_path,
                                                need_redux=params.use_redux)]
    if multiview:
        checks += [lambda: check_zero123plus_folder(params.zero123_path), check_lrm_file]
    if caption:
        checks.append(lambda: check_caption_folder(params.caption_path))
    WeightsMissingError.check_all(checks)


def coarse_bundle_from_multiview(segmented: Segmented, seed: int,
                                 params: ImageToBundleParams) -> tuple[Bundle, dict]:
    """Kiss3DGen's coarse bundle: Zero123++'s six views of the centred object, reconstructed
    by the LRM, rendered with Kiss3DGen's cameras (:mod:`models.generate.kiss3dgen.multiview`).
    Returns the bundle and a match record (``by: zero123plus+lrm``, the weights paths)."""
    from models.generate.kiss3dgen.multiview import coarse_bundle_from_picture
    from models.generate.kiss3dgen.pipeline import resolve_device, resolve_dtype

    device = resolve_device(params)
    picture, _ = centre_object(segmented, size=params.reference_size,
                               object_fraction=params.object_fraction)
    out = coarse_bundle_from_picture(
        picture, seed, params.tile, zero123_path=params.zero123_path,
        lrm_path=params.coarse_lrm_path, lrm_variant=params.coarse_lrm_variant,
        device=device, steps=params.zero123_steps, guidance=params.zero123_guidance,
        distance=KISS3DGEN_DISTANCE, dtype=resolve_dtype(params, device),
    )
    record = {"by": "zero123plus+lrm", "zero123_path": str(params.zero123_path),
              "lrm_path": str(params.coarse_lrm_path), "lrm_variant": params.coarse_lrm_variant,
              "lrm_vertices": len(out.mesh.vertices)}
    return out.bundle, record


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

    Needs ``request.image``; the coarse bundle is ``request.bundle_path`` when given, else
    Zero123++ + LRM when ``zero123_path`` is set, else the library's best match
    (``context.library_path``). Returns
    :class:`models.generate.base.Generated` with metrics ``kiss3dgen_seconds``,
    ``foreground_fraction`` (and ``library_similarity``), ``match`` the library record.
    """
    from models.bundle.spec import BundleError
    from models.generate.background import BackgroundError, remove_background
    from models.generate.base import Generated, GeneratorInputError
    from models.library.format import LibraryError
    from models.reconstruct.lrm.model import CheckpointError, EmptySurfaceError

    params = params_for_request(ImageToBundleParams, request, context)
    if request.image is None:
        raise GeneratorInputError("the kiss3dgen-image generator needs a reference image")
    multiview = params.multiview and request.bundle_path is None
    prompt = (request.prompt or "").strip()
    # Kiss3DGen captions the picture when no prompt is given, if a captioning model is set.
    captioned = not prompt and params.caption_path is not None
    check_image_weights(params, multiview, caption=captioned)
    try:
        segmented = remove_background(request.image, matting_path=params.matting_path)
    except BackgroundError as exc:
        raise GeneratorInputError(str(exc)) from exc

    match = None
    try:
        if request.bundle_path is not None:
            coarse = coarse_bundle_from_file(request.bundle_path, params.tile)
        elif multiview:
            coarse, match = coarse_bundle_from_multiview(segmented, request.seed, params)
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
    except (LibraryError, BundleError, EmptySurfaceError, CheckpointError) as exc:
        raise GeneratorInputError(f"coarse bundle: {exc}") from exc

    caption, source = prompt, "prompt"
    if captioned:
        from models.generate.kiss3dgen.caption import EmptyCaptionError, caption_with_params

        picture, _ = centre_object(segmented, size=params.reference_size,
                                   object_fraction=params.object_fraction)
        try:
            caption, source = caption_with_params(picture, params, "the picture"), "model"
        except EmptyCaptionError as exc:
            raise GeneratorInputError(str(exc)) from exc
    elif not caption:
        caption = coarse.spec.extra.get("caption")
        caption, source = (caption, "library") if caption else (FALLBACK_CAPTION, "fallback")
    out = image_to_bundle(segmented, coarse, caption, request.seed, params)
    g = out.generated
    g.bundle.spec = replace(g.bundle.spec, extra={**g.bundle.spec.extra, "caption": caption,
                                                  "caption_source": source})
    metrics = {
        "kiss3dgen_seconds": round(g.seconds, 4),
        "foreground_fraction": round(float(g.masks.mean()), 6),
    }
    if match is not None and "similarity" in match:
        metrics["library_similarity"] = match["similarity"]
    return Generated(bundle=g.bundle, metrics=metrics, match=match)
