"""Flux Redux from a local folder: a reference image as an image prompt.

What the loader expects on disk: a diffusers ``FluxPriorReduxPipeline`` folder
(``model_index.json``, ``image_encoder/`` a SigLIP vision model, ``feature_extractor/`` its
image processor, ``image_embedder/`` the Redux projection), as
``black-forest-labs/FLUX.1-Redux-dev`` holds and ``save_pretrained`` writes. Its text encoders
are not needed: the caption is encoded by the Flux pipeline's own encoders, and the Redux image
tokens are appended to the T5 tokens, as ``FluxPriorReduxPipeline.__call__`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

#: Sub-folders a Redux folder must have.
REDUX_PARTS = ("image_encoder", "feature_extractor", "image_embedder")

_EXPECTED = (
    "a Flux Redux diffusers folder (model_index.json and sub-folders "
    + ", ".join(REDUX_PARTS)
    + ", e.g. black-forest-labs/FLUX.1-Redux-dev)"
)


def check_redux_folder(path: Path | None) -> None:
    """Raise :class:`models.generate.kiss3dgen.weights.WeightsMissingError` unless ``path`` is
    a Redux folder."""
    from models.generate.kiss3dgen.weights import WeightsMissingError

    if path is None:
        raise WeightsMissingError(None, _EXPECTED, "set the manifest's params.redux_path")
    path = Path(path)
    if not path.exists():
        raise WeightsMissingError(path, _EXPECTED, "the path does not exist")
    if not (path / "model_index.json").is_file():
        raise WeightsMissingError(path, _EXPECTED, "model_index.json is missing")
    missing = [part for part in REDUX_PARTS if not (path / part).is_dir()]
    if missing:
        raise WeightsMissingError(path, _EXPECTED, f"missing sub-folders {missing}")


def load_redux(path: Path, dtype: torch.dtype):
    """A ``FluxPriorReduxPipeline`` (image encoder, feature extractor, embedder only) from
    ``path`` in ``dtype``, every model in ``.eval()``, on the CPU."""
    from diffusers import FluxPriorReduxPipeline

    from models.generate.kiss3dgen.weights import WeightsMissingError, dtype_kwarg

    check_redux_folder(path)
    try:
        redux = FluxPriorReduxPipeline.from_pretrained(
            str(path),
            local_files_only=True,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            **dtype_kwarg(dtype),
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise WeightsMissingError(path, _EXPECTED, f"{type(exc).__name__}: {exc}") from exc
    redux.image_encoder.eval()
    redux.image_embedder.eval()
    return redux


@torch.inference_mode()
def redux_image_tokens(redux, image: np.ndarray, device: torch.device) -> torch.Tensor:
    """Redux image tokens of one reference image: ``(1, N, D)`` with ``D`` the T5 width.

    ``image``: ``(H, W, 3)`` uint8, the object centred on white. ``N`` is the SigLIP patch count
    (729 for FLUX.1-Redux-dev).
    """
    hidden = redux.encode_image(image, device, 1)
    return redux.image_embedder(hidden).image_embeds


def with_image_tokens(
    prompt_embeds: torch.Tensor,
    pooled: torch.Tensor,
    image_tokens: torch.Tensor,
    prompt_embeds_scale: float = 1.0,
    pooled_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, pooled)`` with the image tokens appended and both scaled, as
    ``FluxPriorReduxPipeline`` combines them: ``(B, L + N, D)``, ``(B, P)``."""
    tokens = image_tokens.to(prompt_embeds.device, prompt_embeds.dtype)
    tokens = tokens.expand(prompt_embeds.shape[0], -1, -1)
    combined = torch.cat([prompt_embeds, tokens], dim=1) * prompt_embeds_scale
    return combined, pooled * pooled_scale
