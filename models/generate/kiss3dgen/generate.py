"""Text -> 3D bundle image with Flux + the Kiss3DGen LoRA (Stage I, generator ``kiss3dgen``).

The denoising loop is written out here (rather than calling ``FluxPipeline.__call__``) so that
the Heun sampler can run on Flux's shifted flow-matching sigma schedule; the Euler path is
step-for-step the loop of ``FluxPipeline``. Images are decoded one at a time to bound VAE
memory at 2048 x 1024.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from models.bundle.spec import Bundle, BundleError, BundleSpec, check_layout, split_tiles
from models.bundle.spec import foreground_mask as spec_foreground_mask
from models.generate.kiss3dgen.params import (
    KISS3DGEN_DISTANCE,
    Kiss3DGenParams,
    check_inputs,
    context_defaults,
)
from models.generate.kiss3dgen.pipeline import get_pipeline, set_lora_scale
from models.generate.kiss3dgen.prompts import bundle_prompts

PRODUCER = "kiss3dgen"
#: A view whose cleaned foreground is below this fraction of the tile is "empty".
MIN_FOREGROUND_FRACTION = 0.005
#: A view whose foreground covers more than this fraction of the tile has no background.
MAX_FOREGROUND_FRACTION = 0.98
#: Background holes smaller than this fraction of a tile are filled (larger ones, e.g. the
#: opening of a mug handle, are real).
MAX_HOLE_FRACTION = 0.002

WHITE = np.array([255, 255, 255], dtype=np.uint8)


class DegenerateBundleError(RuntimeError):
    """A generated bundle that cannot be a 3D bundle (empty view, no background, bad layout).

    Retryable: another seed usually works. ``indices`` lists the degenerate items of the call
    and ``results`` holds every item generated (good ones included), so a batched caller can
    keep the good ones.
    """

    retryable = True

    def __init__(self, message: str, indices: list[int] | None = None, results=None) -> None:
        super().__init__(message)
        self.indices = list(indices or [])
        self.results = results


@dataclass
class GeneratedBundle:
    """One generated bundle.

    ``bundle``: cleaned bundle (normal row white outside ``masks``), sidecar with distance
    4.2 and producer ``kiss3dgen``. ``masks``: ``(4, T, T)`` bool cleaned foreground.
    ``raw_image``: ``(2T, 4T, 3)`` uint8 as decoded, before cleaning. ``degenerate``: why the
    check rejected it, or ``None``.
    """

    bundle: Bundle
    masks: np.ndarray
    raw_image: np.ndarray
    caption: str
    seed: int
    seconds: float
    degenerate: str | None = None


def clean_mask(
    mask: np.ndarray,
    min_island_fraction: float = 0.002,
    max_hole_fraction: float = MAX_HOLE_FRACTION,
) -> np.ndarray:
    """Remove small foreground islands and fill small holes of one view's mask.

    ``mask``: ``(T, T)`` bool. Islands (8-connected) smaller than ``min_island_fraction`` of the
    tile are dropped, except that the largest island always stays; background holes (not
    connected to the tile border) smaller than ``max_hole_fraction`` of the tile are filled.
    Returns a new ``(T, T)`` bool array.
    """
    mask = np.asarray(mask, dtype=bool)
    area = mask.size
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    out = np.zeros_like(mask)
    if n:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        keep = sizes >= min_island_fraction * area
        keep[int(np.argmax(sizes))] = True
        out = keep[labels - 1] & (labels > 0)
    holes = ndimage.binary_fill_holes(out) & ~out
    hole_labels, m = ndimage.label(holes)
    if m:
        hole_sizes = ndimage.sum_labels(holes, hole_labels, index=np.arange(1, m + 1))
        small = hole_sizes < max_hole_fraction * area
        out = out | (small[hole_labels - 1] & (hole_labels > 0))
    return out


def apply_masks(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Make the normal row agree with ``masks`` under the spec's foreground rule.

    ``image``: ``(2T, 4T, 3)`` uint8 bundle; ``masks``: ``(4, T, T)`` bool. Normal pixels
    outside the mask become white; mask pixels that decode as background (filled holes) take
    the normal of the nearest foreground pixel. Returns a new image.
    """
    colours, normals = split_tiles(image)
    normals = normals.copy()
    for v in range(normals.shape[0]):
        fg = spec_foreground_mask(normals[v]) & masks[v]
        normals[v][~masks[v]] = WHITE
        fill = masks[v] & ~fg
        if fill.any() and fg.any():
            _, (ii, jj) = ndimage.distance_transform_edt(~fg, return_indices=True)
            normals[v][fill] = normals[v][ii[fill], jj[fill]]
    t = image.shape[0] // 2
    out = image.copy()
    out[t:] = normals.transpose(1, 0, 2, 3).reshape(t, -1, 3)
    return out


def degenerate_reason(image: np.ndarray, masks: np.ndarray | None = None) -> str | None:
    """Why a bundle image is degenerate, or ``None`` when it looks like a bundle.

    ``image``: ``(2T, 4T, 3)`` uint8; ``masks``: ``(4, T, T)`` bool (default: the spec's rule on
    the normal row). Degenerate: wrong layout, a view with (almost) no foreground, a view with
    (almost) no background.
    """
    try:
        check_layout(np.asarray(image))
    except BundleError as exc:
        return f"wrong layout: {exc}"
    if image.dtype != np.uint8:
        return f"wrong layout: dtype {image.dtype}, expected uint8"
    if masks is None:
        masks = spec_foreground_mask(split_tiles(image)[1])
    fractions = masks.reshape(masks.shape[0], -1).mean(axis=1)
    for v, f in enumerate(fractions):
        if f < MIN_FOREGROUND_FRACTION:
            return f"view {v} has an empty foreground mask ({f:.4f} of the tile)"
        if f > MAX_FOREGROUND_FRACTION:
            return f"view {v} has no background ({f:.4f} of the tile is foreground)"
    return None


def check_degenerate(image: np.ndarray, masks: np.ndarray | None = None) -> None:
    """Raise :class:`DegenerateBundleError` (retryable) if :func:`degenerate_reason` finds one."""
    reason = degenerate_reason(image, masks)
    if reason is not None:
        raise DegenerateBundleError(f"degenerate bundle: {reason}", indices=[0])


def flux_sigmas(pipe, steps: int, image_seq_len: int, device: torch.device):
    """Flux's shifted flow-matching schedule: ``(timesteps (steps,), sigmas (steps+1,))``.

    Exactly what ``FluxPipeline`` sets on its scheduler: ``linspace(1, 1/steps, steps)``
    shifted by ``mu`` from the image sequence length, then a terminal 0.
    """
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = pipe.scheduler.config
    mu = calculate_shift(
        image_seq_len,
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.15),
    )
    scheduler = copy.deepcopy(pipe.scheduler)  # the shared pipeline's scheduler stays untouched
    scheduler.set_timesteps(
        sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=mu, device=device
    )
    return scheduler.timesteps, scheduler.sigmas.to(device)


@torch.inference_mode()
def denoise(
    pipe,
    clip_prompts: list[str],
    t5_prompts: list[str],
    seeds: list[int],
    params: Kiss3DGenParams,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run Flux for one batch: ``(B, H, W, 3)`` uint8 images.

    Seeds drive per-sample CPU ``torch.Generator`` s, so a seed gives the same initial noise
    whatever the batch, device or position in the batch.
    """
    device = pipe._execution_device
    batch = len(seeds)
    height, width = params.height, params.width
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=clip_prompts,
        prompt_2=t5_prompts,
        device=device,
        max_sequence_length=params.max_sequence_length,
    )
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    latents, image_ids = pipe.prepare_latents(
        batch,
        pipe.transformer.config.in_channels // 4,
        height,
        width,
        prompt_embeds.dtype,
        device,
        generators,
    )
    latent_dtype = latents.dtype
    timesteps, sigmas = flux_sigmas(pipe, params.steps, latents.shape[1], device)
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full([batch], params.guidance, device=device, dtype=torch.float32)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return pipe.transformer(
            hidden_states=x,
            timestep=t.expand(batch).to(x.dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]

    for i, t in enumerate(timesteps):
        dt = sigmas[i + 1] - sigmas[i]
        v = velocity(latents, t)
        if params.scheduler == "heun" and sigmas[i + 1] > 0:
            # Heun: average the velocity at both ends of the step (the last step to sigma 0
            # stays Euler, as in Karras et al.'s 2nd-order sampler).
            euler = (latents.float() + dt * v.float()).to(latents.dtype)
            v2 = velocity(euler, sigmas[i + 1] * 1000)
            v = (v.float() + v2.float()) / 2
        # Same arithmetic as FlowMatchEulerDiscreteScheduler.step: float32 update, cast back.
        latents = (latents.float() + dt * v.float()).to(latent_dtype)
        if progress is not None:
            progress(i + 1, len(timesteps))

    unpacked = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    unpacked = unpacked / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    images = []
    for k in range(batch):  # one at a time: the VAE decoder dominates memory at 2048 x 1024
        decoded = pipe.vae.decode(unpacked[k : k + 1].to(pipe.vae.dtype), return_dict=False)[0]
        images.append(pipe.image_processor.postprocess(decoded, output_type="np")[0])
    stacked = np.stack(images)
    return np.clip(np.round(stacked * 255.0), 0, 255).astype(np.uint8)


def postprocess(
    image: np.ndarray, caption: str, seed: int, params: Kiss3DGenParams, seconds: float = 0.0
) -> GeneratedBundle:
    """Decoded ``(2T, 4T, 3)`` uint8 image -> :class:`GeneratedBundle` with cleaned masks."""
    raw_masks = spec_foreground_mask(split_tiles(image)[1])
    masks = np.stack([clean_mask(m, params.min_island_fraction) for m in raw_masks])
    cleaned = apply_masks(image, masks)
    spec = BundleSpec(
        tile=image.shape[0] // 2,
        distance=KISS3DGEN_DISTANCE,
        producer=PRODUCER,
        extra={
            "caption": caption,
            "seed": int(seed),
            "steps": params.steps,
            "guidance": params.guidance,
            "scheduler": params.scheduler,
            "lora_scale": params.lora_scale if params.lora_path is not None else None,
        },
    )
    reason = degenerate_reason(cleaned, masks) if params.check_degenerate else None
    return GeneratedBundle(
        bundle=Bundle(image=cleaned, spec=spec),
        masks=masks,
        raw_image=image,
        caption=caption,
        seed=int(seed),
        seconds=seconds,
        degenerate=reason,
    )


def generate_bundles(
    captions: list[str],
    seeds: list[int],
    params: Kiss3DGenParams,
    progress: Callable[[int, int], None] | None = None,
) -> list[GeneratedBundle]:
    """Generate one bundle per ``(caption, seed)`` pair, ``params.batch_size`` per forward.

    ``captions``: object descriptions (the T5 prompt is the bundle sentence + caption);
    ``seeds``: one int per caption (0 is a seed like any other). The pipeline comes from the
    per-process cache. Raises :class:`models.generate.kiss3dgen.pipeline.WeightsMissingError`
    (permanent) when weights are absent,
    :class:`models.generate.kiss3dgen.params.Kiss3DGenParamsError`
    (permanent) on bad params, and :class:`DegenerateBundleError` (retryable) after the whole
    list is generated when ``params.check_degenerate`` and any output is degenerate.
    ``progress(done_steps, total_steps)`` is called after each denoising step.
    """
    check_inputs(params)
    if len(captions) != len(seeds):
        raise ValueError(f"need one seed per caption, got {len(captions)} and {len(seeds)}")
    if not captions:
        return []
    clip_prompts, t5_prompts = bundle_prompts(list(captions))
    pipe = get_pipeline(params)
    set_lora_scale(pipe, params.lora_scale)

    results: list[GeneratedBundle] = []
    n_batches = -(-len(captions) // params.batch_size)
    for b in range(n_batches):
        sl = slice(b * params.batch_size, (b + 1) * params.batch_size)
        start = time.perf_counter()
        step_progress = None
        if progress is not None:
            steps_before = b * params.steps

            def step_progress(done: int, _total: int, _base: int = steps_before) -> None:
                progress(_base + done, n_batches * params.steps)

        images = denoise(pipe, clip_prompts[sl], t5_prompts[sl], list(seeds[sl]), params,
                         step_progress)
        per_item = (time.perf_counter() - start) / len(images)
        for image, caption, seed in zip(images, captions[sl], seeds[sl], strict=True):
            results.append(postprocess(image, caption, seed, params, per_item))

    bad = [i for i, r in enumerate(results) if r.degenerate is not None]
    if bad:
        reasons = "; ".join(f"item {i} (seed {results[i].seed}): {results[i].degenerate}"
                            for i in bad)
        raise DegenerateBundleError(f"degenerate bundle(s): {reasons}", bad, results)
    return results


def params_for_request(request, context) -> Kiss3DGenParams:
    """:class:`Kiss3DGenParams` for a :class:`models.generate.base.GenerationRequest`.

    Precedence: the manifest's ``request.params`` over the context (settings: flux/LoRA paths,
    LoRA scale, device, memory mode) over the dataclass defaults. The size defaults to the
    request's tile (``height = 2 tile``, ``width = 4 tile``). Bad values raise
    :class:`models.generate.base.GeneratorInputError` (permanent) naming them.
    """
    from models.generate.base import GeneratorInputError
    from models.generate.kiss3dgen.params import Kiss3DGenParamsError

    defaults = context_defaults(context, request.tile)
    try:
        return Kiss3DGenParams.from_mapping(request.params, **defaults)
    except Kiss3DGenParamsError as exc:
        raise GeneratorInputError(str(exc)) from exc


def generate_for_requests(requests: list, context) -> list:
    """The ``kiss3dgen`` generator for several text requests sharing the same params.

    Returns one :class:`models.generate.base.Generated` per request, in order. Requests must be
    text requests (``prompt``); image prompts raise ``GeneratorInputError``. Errors as
    :func:`generate_bundles` (``WeightsMissingError`` permanent, ``DegenerateBundleError``
    retryable).
    """
    from models.generate.base import Generated, GeneratorInputError

    if not requests:
        return []
    for r in requests:
        if not r.prompt or not r.prompt.strip():
            raise GeneratorInputError(
                "the kiss3dgen generator needs a text prompt (image prompts are not supported)"
            )
    params = params_for_request(requests[0], context)
    for r in requests[1:]:
        if params_for_request(r, context) != params:
            raise ValueError("generate_for_requests needs requests with identical params")
    results = generate_bundles([r.prompt for r in requests], [r.seed for r in requests], params)
    return [
        Generated(
            bundle=g.bundle,
            metrics={
                "kiss3dgen_seconds": round(g.seconds, 4),
                "foreground_fraction": round(float(g.masks.mean()), 6),
            },
        )
        for g in results
    ]


def generate_for_request(request, context):
    """The ``kiss3dgen`` entry of :data:`models.generate.registry.GENERATORS`: one request -> one
    :class:`models.generate.base.Generated` (bundle + metrics ``kiss3dgen_seconds``,
    ``foreground_fraction``)."""
    return generate_for_requests([request], context)[0]
