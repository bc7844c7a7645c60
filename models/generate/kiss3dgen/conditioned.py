"""Bundle generation conditioned on a reference bundle: Flux img2img + ControlNet tile (+ Redux).

Kiss3DGen's 3D enhancement / editing and its image-to-3D refine a *reference* bundle (rendered
from a mesh, or a coarse bundle for an image) the same way: denoising starts from the reference
noised to ``strength`` (img2img), a ControlNet-Union in ``tile`` mode sees the reference during
the first ``control_guidance_end`` share of the steps with weight
``controlnet_conditioning_scale``, and the T5 prompt carries the caption (optionally followed by
Redux image tokens of a reference picture). Sampling is diffusers' own
``FluxControlNetImg2ImgPipeline`` / ``FluxImg2ImgPipeline`` loop (Euler on Flux's shifted
sigmas), built from the cached Flux models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from models.generate.kiss3dgen.controlnet import CONTROL_MODES, TILE_MODE
from models.generate.kiss3dgen.params import (
    Kiss3DGenParams,
    Kiss3DGenParamsError,
    context_defaults,
)


@dataclass(frozen=True)
class ConditionedParams(Kiss3DGenParams):
    """Flux + LoRA params plus the reference conditioning (img2img strength, ControlNet)."""

    controlnet_path: Path | None = None
    """Local Flux ControlNet folder (InstantX ``FLUX.1-dev-Controlnet-Union`` layout)."""
    use_controlnet: bool = True
    """Condition on the reference with the ControlNet; ``false`` runs plain img2img."""
    control_mode: str = TILE_MODE
    """Union ControlNet mode the reference is given in (``tile`` as Kiss3DGen does)."""
    controlnet_conditioning_scale: float = 0.6
    """Weight of the ControlNet residuals (0 switches the ControlNet off)."""
    control_guidance_start: float = 0.0
    """Share of the denoising steps after which the ControlNet starts acting."""
    control_guidance_end: float = 0.65
    """Share of the denoising steps after which the ControlNet stops acting."""
    tile_down_scale: int = 1
    """The tile condition is the reference shrunk this many times and enlarged back (1: as is,
    Kiss3DGen's setting)."""
    strength: float = 0.95
    """img2img strength in (0, 1]: how far the reference is noised before denoising (1 ignores
    the reference's pixels; the ControlNet still sees it)."""
    caption_path: Path | None = None
    """Local image-captioning model folder (Florence-2 or BLIP, ``save_pretrained`` layout;
    ``FOUNDRY_CAPTION_PATH``): captions the object when the row has no prompt (a
    ``kiss3dgen-mesh`` enhance: the render's front view; ``kiss3dgen-image``: the centred
    picture). Never loaded when the row has a prompt."""
    caption_max_tokens: int = 64
    """Longest caption, in tokens of the captioning model (1..512)."""

    def check(self) -> None:
        """Raise :class:`Kiss3DGenParamsError` naming the first bad value."""
        super().check()
        if self.scheduler != "euler":
            raise Kiss3DGenParamsError(
                f"{self.generator_name()} samples with diffusers' Euler loop; scheduler must "
                f"be 'euler', got {self.scheduler!r}"
            )
        if not 0 < self.strength <= 1:
            raise Kiss3DGenParamsError(f"strength must be in (0, 1], got {self.strength}")
        if int(self.steps * self.strength) < 1:
            raise Kiss3DGenParamsError(
                f"steps x strength must leave at least one step, got {self.steps} x "
                f"{self.strength}"
            )
        if self.control_mode not in CONTROL_MODES:
            raise Kiss3DGenParamsError(
                f"control_mode must be one of {sorted(CONTROL_MODES)}, got {self.control_mode!r}"
            )
        if self.controlnet_conditioning_scale < 0:
            raise Kiss3DGenParamsError(
                "controlnet_conditioning_scale must be >= 0, got "
                f"{self.controlnet_conditioning_scale}"
            )
        if not 0 <= self.control_guidance_start < self.control_guidance_end <= 1:
            raise Kiss3DGenParamsError(
                "need 0 <= control_guidance_start < control_guidance_end <= 1, got "
                f"{self.control_guidance_start} and {self.control_guidance_end}"
            )
        tokens = self.caption_max_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= 512:
            raise Kiss3DGenParamsError(
                f"caption_max_tokens must be an integer in [1, 512], got {tokens!r}"
            )
        if not isinstance(self.tile_down_scale, int) or self.tile_down_scale < 1:
            raise Kiss3DGenParamsError(
                f"tile_down_scale must be a positive integer, got {self.tile_down_scale!r}"
            )


@dataclass(frozen=True)
class ImagePrompt:
    """A Redux image prompt: the reference picture and how strongly it speaks."""

    image: np.ndarray
    """``(S, S, 3)`` uint8: the object centred on white."""
    redux_path: Path
    """Local Flux Redux folder."""
    prompt_embeds_scale: float = 1.0
    """Scale of the T5 + image tokens (``FluxPriorReduxPipeline``'s ``prompt_embeds_scale``)."""
    pooled_scale: float = 1.0
    """Scale of the pooled CLIP embedding."""


def params_for_request(cls: type[Kiss3DGenParams], request, context) -> Kiss3DGenParams:
    """``cls`` params for a :class:`models.generate.base.GenerationRequest`: the manifest's
    ``request.params`` over the context (Flux/LoRA/ControlNet/Redux/matting/caption paths, LoRA
    scale, device, memory mode) over the class defaults; the size follows the request's tile. Bad
    values raise :class:`models.generate.base.GeneratorInputError` naming them."""
    from models.generate.base import GeneratorInputError

    defaults = context_defaults(context, request.tile)
    # Weights folders from settings, for the params classes that have them.
    own = {f.name for f in fields(cls)}
    from_context = {"controlnet_path": "controlnet_path", "redux_path": "redux_path",
                    "matting_path": "matting_path", "caption_path": "caption_path",
                    "zero123_path": "zero123_path", "coarse_lrm_path": "lrm_path",
                    "coarse_lrm_variant": "lrm_variant"}
    for name, setting in from_context.items():
        if name in own:
            defaults[name] = getattr(context, setting, None)
    try:
        return cls.from_mapping(request.params, **defaults)
    except Kiss3DGenParamsError as exc:
        raise GeneratorInputError(str(exc)) from exc


def check_conditioned_weights(params: ConditionedParams, redux_path: Path | None = None,
                              need_redux: bool = False) -> None:
    """Raise one :class:`models.generate.kiss3dgen.pipeline.WeightsMissingError` naming every
    missing weights path of this generation (Flux, LoRA, ControlNet when used, Redux)."""
    from models.generate.kiss3dgen.pipeline import check_weights

    check_weights(
        params,
        controlnet_path=params.controlnet_path,
        need_controlnet=params.use_controlnet,
        redux_path=redux_path,
        need_redux=need_redux,
    )


@torch.inference_mode()
def generate_conditioned(
    caption: str,
    seed: int,
    params: ConditionedParams,
    reference: np.ndarray,
    image_prompt: ImagePrompt | None = None,
):
    """One bundle from a reference bundle image and a caption.

    ``reference``: ``(2T, 4T, 3)`` uint8 bundle image at the params' size (the img2img start
    and, through :func:`models.generate.kiss3dgen.controlnet.tile_condition`, the ControlNet
    condition). ``seed`` drives a CPU ``torch.Generator``: same seed, same bundle on any
    device. Returns a :class:`models.generate.kiss3dgen.generate.GeneratedBundle` (masks
    cleaned, degenerate check as ``params.check_degenerate``). Raises ``WeightsMissingError``
    naming every missing path, ``Kiss3DGenParamsError`` on bad params.
    """
    from PIL import Image

    from models.generate.kiss3dgen.controlnet import control_mode_index, tile_condition
    from models.generate.kiss3dgen.generate import postprocess
    from models.generate.kiss3dgen.pipeline import get_pipeline, get_redux, set_lora_scale
    from models.generate.kiss3dgen.prompts import bundle_prompts
    from models.generate.kiss3dgen.redux import redux_image_tokens, with_image_tokens

    params.check()
    expected = (params.height, params.width, 3)
    if reference.shape != expected or reference.dtype != np.uint8:
        raise ValueError(
            f"reference bundle must be {expected} uint8, got {reference.shape} {reference.dtype}"
        )
    check_conditioned_weights(
        params,
        redux_path=None if image_prompt is None else image_prompt.redux_path,
        need_redux=image_prompt is not None,
    )
    start = time.perf_counter()
    kind = "controlnet" if params.use_controlnet else "img2img"
    pipe = get_pipeline(
        params, kind=kind, controlnet_path=params.controlnet_path if params.use_controlnet else None
    )
    set_lora_scale(pipe, params.lora_scale)
    device = pipe._execution_device

    clip_prompts, t5_prompts = bundle_prompts([caption])
    prompt_embeds, pooled, _ = pipe.encode_prompt(
        prompt=clip_prompts,
        prompt_2=t5_prompts,
        device=device,
        max_sequence_length=params.max_sequence_length,
    )
    if image_prompt is not None:
        redux = get_redux(image_prompt.redux_path, params)
        tokens = redux_image_tokens(redux, image_prompt.image, device)
        prompt_embeds, pooled = with_image_tokens(
            prompt_embeds, pooled, tokens, image_prompt.prompt_embeds_scale,
            image_prompt.pooled_scale,
        )

    call = {
        "prompt_embeds": prompt_embeds,
        "pooled_prompt_embeds": pooled,
        "image": Image.fromarray(reference),
        "strength": params.strength,
        "height": params.height,
        "width": params.width,
        "num_inference_steps": params.steps,
        "guidance_scale": params.guidance,
        "generator": torch.Generator("cpu").manual_seed(int(seed)),
        "output_type": "np",
        "max_sequence_length": params.max_sequence_length,
    }
    if params.use_controlnet:
        call.update(
            control_image=Image.fromarray(tile_condition(reference, params.tile_down_scale)),
            control_mode=control_mode_index(pipe.controlnet, params.control_mode),
            controlnet_conditioning_scale=params.controlnet_conditioning_scale,
            control_guidance_start=params.control_guidance_start,
            control_guidance_end=params.control_guidance_end,
        )
    pipe.set_progress_bar_config(disable=True)
    decoded = pipe(**call).images[0]
    image = np.clip(np.round(decoded * 255.0), 0, 255).astype(np.uint8)
    return postprocess(image, caption, seed, params, time.perf_counter() - start)
