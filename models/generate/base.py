"""The types every Stage I generator shares: its request, its context and its answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.bundle.spec import Bundle


class GeneratorInputError(ValueError):
    """The request cannot be served by this generator (permanent)."""

    retryable = False


@dataclass(frozen=True)
class GenerationRequest:
    """What a generator needs.

    ``image``: ``(H, W, 3)`` uint8 reference image (white or any background) or None.
    ``bundle_path``: a user-supplied bundle PNG (its sidecar beside it when present).
    ``mesh_path``: an input mesh to enhance, edit or retexture (3D-to-3D generators).
    ``params``: generator-specific overrides from the manifest.
    """

    kind: str
    prompt: str | None = None
    image: np.ndarray | None = None
    bundle_path: Path | None = None
    mesh_path: Path | None = None
    seed: int = 0
    tile: int = 512
    params: dict = field(default_factory=dict)


@dataclass
class Generated:
    """A generator's answer: the bundle, metrics to record, and what it matched (if anything)."""

    bundle: Bundle
    metrics: dict[str, float] = field(default_factory=dict)
    match: dict | None = None


@dataclass(frozen=True)
class GeneratorContext:
    """Plain values generators may need: library folder, model paths, device."""

    library_path: Path | None = None
    device: str = "cpu"
    flux_path: str | None = None
    lora_path: str | None = None
    lora_scale: float = 1.0
    flux_memory: str | None = None  # FOUNDRY_FLUX_MEMORY: auto|full|offload|sequential|fp8|nf4
    controlnet_path: str | None = None  # FOUNDRY_CONTROLNET_PATH: Flux ControlNet-Union folder
    redux_path: str | None = None  # FOUNDRY_REDUX_PATH: Flux Redux folder
    matting_path: str | None = None  # FOUNDRY_MATTING_PATH: TorchScript matting model
    caption_path: str | None = None  # FOUNDRY_CAPTION_PATH: image-captioning model folder
    zero123_path: str | None = None  # FOUNDRY_ZERO123_PATH: Zero123++ folder (kiss3dgen-image)
    lrm_path: str | None = None  # FOUNDRY_LRM_PATH: LRM checkpoint (kiss3dgen-image's coarse)
    lrm_variant: str | None = None  # FOUNDRY_LRM_VARIANT
