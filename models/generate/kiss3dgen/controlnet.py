"""Flux ControlNet-Union from a local folder, and the tile condition Kiss3DGen gives it.

What the loader expects on disk: a diffusers ControlNet folder, ``config.json`` and
``diffusion_pytorch_model*.safetensors`` (what ``FluxControlNetModel.save_pretrained`` writes
and what the ``InstantX/FLUX.1-dev-Controlnet-Union`` repository holds). A *union* ControlNet
(``num_mode`` in its config) takes a control mode index per condition: :data:`CONTROL_MODES`
are InstantX Union's; Kiss3DGen conditions on a bundle image in ``tile`` mode (index 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: Control mode indices of InstantX FLUX.1-dev-Controlnet-Union (its model card).
CONTROL_MODES = {"canny": 0, "tile": 1, "depth": 2, "blur": 3, "pose": 4, "gray": 5, "lq": 6}
#: The mode Kiss3DGen's 3D enhancement and image-to-3D use: the bundle itself as condition.
TILE_MODE = "tile"

_EXPECTED = (
    "a Flux ControlNet diffusers folder (config.json and diffusion_pytorch_model.safetensors, "
    "e.g. InstantX/FLUX.1-dev-Controlnet-Union)"
)


def check_controlnet_folder(path: Path | None) -> None:
    """Raise :class:`models.generate.kiss3dgen.weights.WeightsMissingError` unless ``path``
    is a ControlNet folder."""
    from models.generate.kiss3dgen.weights import WeightsMissingError

    if path is None:
        raise WeightsMissingError(None, _EXPECTED, "set the manifest's params.controlnet_path")
    path = Path(path)
    if not path.exists():
        raise WeightsMissingError(path, _EXPECTED, "the path does not exist")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise WeightsMissingError(path, _EXPECTED, "config.json is missing")
    if not any(path.glob("*.safetensors")):
        raise WeightsMissingError(path, _EXPECTED, "no .safetensors weights")


def load_controlnet(path: Path, dtype: torch.dtype):
    """``FluxControlNetModel.from_pretrained(path)`` in ``dtype``, in ``.eval()``, on the CPU."""
    from diffusers import FluxControlNetModel

    from models.generate.kiss3dgen.weights import WeightsMissingError, dtype_kwarg

    check_controlnet_folder(path)
    try:
        model = FluxControlNetModel.from_pretrained(
            str(path), local_files_only=True, **dtype_kwarg(dtype)
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise WeightsMissingError(path, _EXPECTED, f"{type(exc).__name__}: {exc}") from exc
    return model.eval()


def control_mode_index(controlnet, mode: str) -> int | None:
    """The mode index to pass for ``mode``: ``None`` for a single-mode (non-union) ControlNet."""
    if mode not in CONTROL_MODES:
        raise ValueError(f"control mode must be one of {sorted(CONTROL_MODES)}, got {mode!r}")
    if getattr(controlnet.config, "num_mode", None) is None:
        return None
    return CONTROL_MODES[mode]


def tile_condition(image: np.ndarray, down_scale: int = 1) -> np.ndarray:
    """Kiss3DGen's ``tile`` condition: the image shrunk ``down_scale`` times and enlarged back
    (bilinear), so the ControlNet sees its layout and colours without fine detail.

    ``image``: ``(H, W, 3)`` uint8; returns a new ``(H, W, 3)`` uint8 (a copy when
    ``down_scale`` is 1, as Kiss3DGen uses it).
    """
    from PIL import Image

    if down_scale < 1:
        raise ValueError(f"down_scale must be >= 1, got {down_scale}")
    h, w = image.shape[:2]
    if down_scale == 1:
        return np.array(image, dtype=np.uint8, copy=True)
    small = Image.fromarray(image).resize(
        (max(1, w // down_scale), max(1, h // down_scale)), Image.Resampling.BILINEAR
    )
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR)).copy()
