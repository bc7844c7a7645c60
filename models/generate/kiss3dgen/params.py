"""Parameters of the ``kiss3dgen`` Stage I generator (Flux + the Kiss3DGen LoRA).

The manifest's ``params`` for this generator map one-to-one onto :class:`Kiss3DGenParams`
fields; settings (``FOUNDRY_FLUX_PATH``, ``FOUNDRY_LORA_PATH``, ``FOUNDRY_LORA_SCALE``) give the
defaults of the paths and the strength. :func:`check_inputs` fails loudly and names the bad
value; it never fixes the input quietly.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

#: Samplers on the flow-matching sigma schedule of the Flux scheduler.
SCHEDULERS = ("euler", "heun")
DTYPES = ("bfloat16", "float16", "float32", "auto")
#: How Flux is fitted into GPU memory (see :mod:`models.generate.kiss3dgen.memory`).
MEMORY_MODES = ("auto", "full", "offload", "sequential", "fp8", "nf4")
#: Flux latents are 8x the VAE down-sampling, packed 2x2: image sides must be multiples of 16.
SIDE_MULTIPLE = 16
#: Camera distance of Kiss3DGen's LoRA renders (the bundle spec's default is 4.5).
KISS3DGEN_DISTANCE = 4.2


class Kiss3DGenParamsError(ValueError):
    """A ``kiss3dgen`` parameter with a value the generator cannot use (a permanent failure)."""

    retryable = False


@dataclass(frozen=True)
class Kiss3DGenParams:
    """How to generate bundles with Flux + LoRA. Every field is a manifest ``params`` key."""

    flux_path: Path | None = None
    """Local Flux weights: a diffusers folder (``model_index.json``) or one ``.safetensors``
    transformer checkpoint (then ``flux_base_path`` supplies the rest of the pipeline)."""
    flux_base_path: Path | None = None
    """Diffusers folder giving VAE, text encoders, tokenizers, scheduler and the transformer
    config when ``flux_path`` is a single file; default: the file's folder if it holds
    ``model_index.json``."""
    lora_path: Path | None = None
    """Kiss3DGen LoRA ``.safetensors`` (the published ``rgb_normal.safetensors`` format or one
    saved by :mod:`models.generate.kiss3dgen.train`); ``None`` runs the base model."""
    lora_scale: float = 1.0
    """LoRA adapter strength; 0 gives the base model's output exactly."""
    steps: int = 20
    """Denoising steps (sampler steps; Heun evaluates the transformer twice per step)."""
    guidance: float = 3.5
    """Flux distilled guidance scale (the transformer's guidance embedding)."""
    width: int = 2048
    """Bundle width in pixels: 4 tiles."""
    height: int = 1024
    """Bundle height in pixels: 2 tiles; must be half the width (tile = height / 2)."""
    scheduler: str = "euler"
    """Sampler: ``euler`` (flow-matching Euler, as Flux ships) or ``heun`` (2nd order)."""
    max_sequence_length: int = 512
    """T5 token budget of the prompt (the caption is truncated beyond it)."""
    dtype: str = "auto"
    """Weights/compute dtype: ``auto`` = bfloat16 on CUDA, float32 on CPU."""
    device: str = "auto"
    """Torch device: ``auto`` = CUDA when available, else CPU."""
    offload: bool = False
    """Model CPU offload (components move to the GPU one at a time) for small GPUs; the same
    as ``memory_mode: offload``."""
    memory_mode: str = "auto"
    """How Flux fits the GPU (``FOUNDRY_FLUX_MEMORY``): ``full`` (everything resident),
    ``offload`` (model CPU offload), ``sequential`` (sequential CPU offload, slowest, least
    memory), ``fp8`` (transformer and ControlNet weights stored in float8, computed in the
    compute dtype), ``nf4`` (4-bit NF4 transformer via bitsandbytes, CUDA only), or ``auto``
    (chosen from free GPU memory; ``full`` on CPU)."""
    compile: bool = False
    """``torch.compile`` the transformer (first call slow, later calls faster)."""
    batch_size: int = 4
    """Prompts denoised together in one transformer batch."""
    check_degenerate: bool = True
    """Reject outputs with an empty foreground in any view as a retryable failure."""
    min_island_fraction: float = 0.002
    """Mask clean-up: foreground islands smaller than this fraction of a tile are removed."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None, **defaults: Any) -> Kiss3DGenParams:
        """Params from a manifest ``params`` dict over ``defaults`` (e.g. from settings).

        Unknown keys raise :class:`Kiss3DGenParamsError` naming them and the nearest valid key;
        path fields become ``Path``; the result passes :meth:`check`.
        """
        known = [f.name for f in fields(cls)]
        merged = {k: v for k, v in defaults.items() if v is not None}
        merged.update(data or {})
        unknown = sorted(set(merged) - set(known))
        if unknown:
            hints = []
            for key in unknown:
                near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
                hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            raise Kiss3DGenParamsError(
                f"unknown {cls.generator_name()} params {', '.join(hints)}; known: {sorted(known)}"
            )
        for f in fields(cls):
            if "Path" in str(f.type) and merged.get(f.name) is not None:
                merged[f.name] = Path(merged[f.name]).expanduser()
        params = replace(cls(), **merged)
        params.check()
        return params

    @classmethod
    def generator_name(cls) -> str:
        """The generator whose manifest ``params`` these are (named in errors)."""
        return "kiss3dgen"

    def check(self) -> None:
        """Raise :class:`Kiss3DGenParamsError` naming the first bad value."""
        check_inputs(self)

    @property
    def tile(self) -> int:
        """Tile side in pixels (``height / 2``)."""
        return self.height // 2


def check_inputs(params: Kiss3DGenParams) -> None:
    """Raise :class:`Kiss3DGenParamsError` naming the first bad value; return ``None`` if fine.

    Paths are not checked here (they are checked where the weights load, raising
    :class:`models.generate.kiss3dgen.pipeline.WeightsMissingError`).
    """
    p = params
    if p.width != 2 * p.height:
        raise Kiss3DGenParamsError(
            f"height must be half of width (2 x 4 tiles), got {p.width} x {p.height}"
        )
    if p.height % (2 * SIDE_MULTIPLE) or p.height <= 0:
        raise Kiss3DGenParamsError(
            f"height must be a positive multiple of {2 * SIDE_MULTIPLE} so each tile is a "
            f"multiple of {SIDE_MULTIPLE}, got {p.height}"
        )
    if not isinstance(p.steps, int) or p.steps < 1:
        raise Kiss3DGenParamsError(f"steps must be a positive integer, got {p.steps!r}")
    if p.scheduler not in SCHEDULERS:
        raise Kiss3DGenParamsError(f"scheduler must be one of {SCHEDULERS}, got {p.scheduler!r}")
    if p.dtype not in DTYPES:
        raise Kiss3DGenParamsError(f"dtype must be one of {DTYPES}, got {p.dtype!r}")
    if not (p.device in ("auto", "cpu") or str(p.device).startswith("cuda")):
        raise Kiss3DGenParamsError(f"device must be auto, cpu or cuda[:N], got {p.device!r}")
    if not 1 <= p.max_sequence_length <= 512:
        raise Kiss3DGenParamsError(
            f"max_sequence_length must be in [1, 512], got {p.max_sequence_length}"
        )
    if p.guidance < 0:
        raise Kiss3DGenParamsError(f"guidance must be >= 0, got {p.guidance}")
    if p.memory_mode not in MEMORY_MODES:
        raise Kiss3DGenParamsError(
            f"memory_mode must be one of {MEMORY_MODES}, got {p.memory_mode!r}"
        )
    if p.batch_size < 1:
        raise Kiss3DGenParamsError(f"batch_size must be >= 1, got {p.batch_size}")
    if not 0 <= p.min_island_fraction < 1:
        raise Kiss3DGenParamsError(
            f"min_island_fraction must be in [0, 1), got {p.min_island_fraction}"
        )


def context_defaults(context: Any, tile: int) -> dict[str, Any]:
    """The Kiss3DGen fields a :class:`models.generate.base.GeneratorContext` supplies (weights
    paths, LoRA scale, device, memory mode) and the bundle size of ``tile``-pixel tiles, as
    defaults beneath a request's own params."""
    return {
        "flux_path": context.flux_path,
        "lora_path": context.lora_path,
        "lora_scale": context.lora_scale,
        "device": context.device,
        "memory_mode": context.flux_memory,
        "height": 2 * tile,
        "width": 4 * tile,
    }
