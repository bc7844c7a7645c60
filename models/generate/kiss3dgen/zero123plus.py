"""Zero123++ (v1.2) from a local folder: one picture -> six views of the object in a 3 x 2 grid.

Kiss3DGen's image-to-3D draws its coarse bundle from Zero123++'s six views reconstructed by an
LRM. Zero123++ is a Stable-Diffusion-2-style UNet (v-prediction, Euler ancestral sampling)
conditioned on the input picture in two ways, both rebuilt here on diffusers' and
transformers' own classes:

- **Reference attention.** The picture's VAE latent, noised to the current timestep, runs
  through the same UNet first; every self-attention layer keeps its input tokens, and in the
  denoising pass each self-attention attends to its own tokens *and* those kept tokens
  (:class:`ReferenceAttention`). The negative branch of classifier-free guidance uses the
  latent of an all-zero picture.
- **Image-embedding conditioning.** The CLIP vision embedding of the picture is added to the
  empty prompt's text-encoder states, weighted per token by the folder's
  ``ramping_coefficients``; the negative branch keeps the plain empty-prompt states.

The denoised latent is unscaled (Zero123++ v1.2 trains on latents shifted by 0.22 and scaled
by 0.75, images scaled by 0.5 / 0.8) and decoded to a ``(3 s, 2 s)`` grid of six ``s``-pixel
views (``s`` = 320 in the release) at azimuths 30, 90, ..., 330 degrees and elevations 20 and
-10 degrees alternately (:data:`VIEW_AZIMUTHS`, :data:`VIEW_ELEVATIONS`), relative to the input.

What the loader expects on disk: the ``sudo-ai/zero123plus-v1.2`` folder layout, i.e.
``model_index.json`` (with ``ramping_coefficients``) and the sub-folders of
:data:`ZERO123PLUS_PARTS`, each loaded with its class's ``from_pretrained``. The folder's own
custom pipeline code is never imported or run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Sub-folders of a Zero123++ folder and the class each is loaded with.
ZERO123PLUS_PARTS = {
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "scheduler": ("diffusers", "EulerAncestralDiscreteScheduler"),
    "vision_encoder": ("transformers", "CLIPVisionModelWithProjection"),
    "feature_extractor_clip": ("transformers", "CLIPImageProcessor"),
    "feature_extractor_vae": ("transformers", "CLIPImageProcessor"),
}
#: Azimuths (degrees, relative to the input view) of the six views, grid order (row-major).
VIEW_AZIMUTHS = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
#: Elevations (degrees) of the six views, grid order.
VIEW_ELEVATIONS = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
#: Grid of the output image: rows x columns of views.
GRID_ROWS, GRID_COLS = 3, 2
# Zero123++ v1.2's latent and image normalisation (its training convention).
_LATENT_SHIFT, _LATENT_SCALE, _IMAGE_SCALE = 0.22, 0.75, 0.5 / 0.8

_EXPECTED = (
    "a Zero123++ folder (sudo-ai/zero123plus-v1.2 layout: model_index.json with "
    "ramping_coefficients and sub-folders " + ", ".join(ZERO123PLUS_PARTS) + ")"
)


@dataclass
class Zero123Plus:
    """The loaded parts of a Zero123++ folder (every model in ``.eval()``, on one device)."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler_config: dict
    """The Euler ancestral scheduler's config (a fresh scheduler is made per call)."""
    vision_encoder: Any
    feature_extractor_clip: Any
    feature_extractor_vae: Any
    ramping: torch.Tensor
    """``(tokens, 1)`` weights of the image embedding added to each text token."""

    @property
    def view_size(self) -> int:
        """Side of one view in pixels (the VAE feature extractor's crop: 320 in the release)."""
        crop = self.feature_extractor_vae.crop_size
        if isinstance(crop, int):
            return crop
        return int(crop["height"] if isinstance(crop, dict) else crop.height)

    @property
    def device(self) -> torch.device:
        return self.unet.device


def check_zero123plus_folder(path: Path | None) -> None:
    """Raise :class:`models.generate.kiss3dgen.weights.WeightsMissingError` naming ``path``
    unless it holds ``model_index.json`` with ``ramping_coefficients`` and every part."""
    from models.generate.kiss3dgen.weights import WeightsMissingError

    if path is None:
        raise WeightsMissingError(None, _EXPECTED, "set FOUNDRY_ZERO123_PATH or "
                                  "params.zero123_path")
    path = Path(path)
    if not path.is_dir():
        raise WeightsMissingError(path, _EXPECTED, "the folder does not exist")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        raise WeightsMissingError(path, _EXPECTED, "model_index.json is missing or unreadable"
                                  ) from None
    if not isinstance(index, dict) or not isinstance(index.get("ramping_coefficients"), list):
        raise WeightsMissingError(path, _EXPECTED, "model_index.json has no "
                                  "ramping_coefficients")
    missing = [part for part in ZERO123PLUS_PARTS if not (path / part).is_dir()]
    if missing:
        raise WeightsMissingError(path, _EXPECTED, f"missing sub-folders {missing}")


def load_zero123plus(path: Path, device: torch.device, dtype: torch.dtype) -> Zero123Plus:
    """Every part of the Zero123++ folder at ``path``, models in ``dtype`` on ``device``.
    A part that does not load raises ``WeightsMissingError`` naming the folder and part."""
    import importlib

    from models.generate.kiss3dgen.weights import WeightsMissingError, dtype_kwarg

    check_zero123plus_folder(path)
    parts: dict[str, Any] = {}
    for name, (library, class_name) in ZERO123PLUS_PARTS.items():
        cls = getattr(importlib.import_module(library), class_name)
        try:
            if name == "scheduler":
                parts[name] = dict(cls.load_config(str(path / name)))
            elif name.startswith(("tokenizer", "feature_extractor")):
                parts[name] = cls.from_pretrained(str(path / name))
            elif library == "diffusers":
                parts[name] = cls.from_pretrained(str(path / name), **dtype_kwarg(dtype))
            else:
                parts[name] = cls.from_pretrained(str(path / name), dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise WeightsMissingError(path, _EXPECTED, f"{name}/ did not load: {exc}") from None
        if isinstance(parts[name], torch.nn.Module):
            parts[name] = parts[name].to(device).eval()
    index = json.loads((path / "model_index.json").read_text())
    ramping = torch.tensor(index["ramping_coefficients"], dtype=dtype, device=device)
    return Zero123Plus(scheduler_config=parts.pop("scheduler"), ramping=ramping[:, None],
                       **parts)


def get_zero123plus(path: Path, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> Zero123Plus:
    """The Zero123++ folder at ``path``, loaded once per process (:mod:`models.cache`)."""
    from models.generate.kiss3dgen.pipeline import _identity, cached

    return cached("zero123plus", (_identity(Path(path)), str(device), str(dtype)),
                  lambda: load_zero123plus(Path(path), device, dtype))


@dataclass
class ReferenceStore:
    """Self-attention inputs kept by the reference pass for the denoising pass."""

    mode: str = "write"
    """``write`` (reference pass: keep each layer's tokens) or ``read`` (denoising pass)."""
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    """Processor name -> ``(B, N, C)`` tokens of that self-attention's input."""


class ReferenceAttention:
    """An attention processor that, on self-attention layers, also attends to the tokens the
    reference pass kept there (Zero123++'s reference attention); on other layers, and when
    called without a :class:`ReferenceStore`, it is the plain processor."""

    def __init__(self, name: str, self_attention: bool) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name = name
        self.self_attention = self_attention
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 reference: ReferenceStore | None = None) -> torch.Tensor:
        if self.self_attention and reference is not None:
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if reference.mode == "write":
                reference.tokens[self.name] = context
            else:
                context = torch.cat([context, reference.tokens.pop(self.name)], dim=1)
            encoder_hidden_states = context
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_reference_attention(unet) -> None:
    """Give every attention layer of ``unet`` a :class:`ReferenceAttention` processor, active
    on the self-attention layers (``attn1``) as Zero123++ does. Idempotent."""
    procs = {name: ReferenceAttention(name, name.endswith("attn1.processor"))
             for name in unet.attn_processors}
    unet.set_attn_processor(procs)


def _pixels(processor, image: np.ndarray, device, dtype) -> torch.Tensor:
    from PIL import Image

    out = processor(images=Image.fromarray(image), return_tensors="pt").pixel_values
    return out.to(device=device, dtype=dtype)


def _text_states(model: Zero123Plus) -> torch.Tensor:
    """``(1, T, C)`` text-encoder states of the empty prompt, padded to the tokenizer's length."""
    tokens = model.tokenizer("", padding="max_length", max_length=model.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
    return model.text_encoder(tokens.input_ids.to(model.device))[0]


@torch.inference_mode()
def generate_views(model: Zero123Plus, image: np.ndarray, seed: int, *, steps: int = 75,
                   guidance: float = 4.0) -> np.ndarray:
    """Six views of the object in ``image``.

    ``image``: ``(H, W, 3)`` uint8 RGB, the object centred on white. ``seed`` drives a CPU
    ``torch.Generator`` (initial latent, reference noise, ancestral noise): same seed, same
    views. ``guidance`` > 1 runs classifier-free guidance. Returns ``(6, s, s, 3)`` uint8 in
    grid order (azimuths :data:`VIEW_AZIMUTHS`, elevations :data:`VIEW_ELEVATIONS`).
    """
    from diffusers import EulerAncestralDiscreteScheduler

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"generate_views takes (H, W, 3) uint8, got {image.shape} {image.dtype}")
    device, dtype = model.device, model.unet.dtype
    generator = torch.Generator("cpu").manual_seed(int(seed))

    def noise(shape) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)

    install_reference_attention(model.unet)
    scheduler = EulerAncestralDiscreteScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps, device=device)
    guided = guidance > 1.0

    # Reference latents: the picture's raw VAE latent (and an all-zero picture's, unguided).
    vae_pixels = _pixels(model.feature_extractor_vae, image, device, dtype)
    if guided:
        vae_pixels = torch.cat([torch.zeros_like(vae_pixels), vae_pixels])
    posterior = model.vae.encode(vae_pixels).latent_dist
    reference = posterior.mean + posterior.std * noise(posterior.mean.shape)

    # Prompt states: empty prompt + ramped CLIP image embedding (negative: empty prompt only).
    text = _text_states(model)
    clip_pixels = _pixels(model.feature_extractor_clip, image, device, dtype)
    embedding = model.vision_encoder(clip_pixels).image_embeds[:, None, :]
    states = text + embedding * model.ramping
    if guided:
        states = torch.cat([text, states])

    side = model.view_size
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    shape = (1, model.unet.config.in_channels, GRID_ROWS * side // factor,
             GRID_COLS * side // factor)
    latents = noise(shape) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        batch = torch.cat([latents] * 2) if guided else latents
        batch = scheduler.scale_model_input(batch, t)
        store = ReferenceStore()
        noisy_reference = scheduler.add_noise(reference, noise(reference.shape), t.reshape(-1))
        noisy_reference = scheduler.scale_model_input(noisy_reference, t)
        model.unet(noisy_reference, t, encoder_hidden_states=states,
                   cross_attention_kwargs={"reference": store})
        store.mode = "read"
        prediction = model.unet(batch, t, encoder_hidden_states=states,
                                cross_attention_kwargs={"reference": store}).sample
        if guided:
            unconditioned, conditioned = prediction.chunk(2)
            prediction = unconditioned + guidance * (conditioned - unconditioned)
        latents = scheduler.step(prediction, t, latents, generator=generator).prev_sample

    latents = latents / _LATENT_SCALE + _LATENT_SHIFT
    decoded = model.vae.decode(latents / model.vae.config.scaling_factor).sample / _IMAGE_SCALE
    grid = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
    grid = grid.permute(1, 2, 0).cpu().numpy()
    return split_grid(grid, side)


def split_grid(grid: np.ndarray, side: int) -> np.ndarray:
    """``(3 s, 2 s, C)`` grid -> ``(6, s, s, C)`` views, row-major (the grid order)."""
    rows = [np.split(row, GRID_COLS, axis=1) for row in np.split(grid[: GRID_ROWS * side],
                                                                 GRID_ROWS, axis=0)]
    return np.stack([view for row in rows for view in row])
