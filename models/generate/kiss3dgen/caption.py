"""Captions of an input mesh for enhancement prompts: a local image-captioning model.

Kiss3DGen's 3D enhancement prompts Flux with a caption of the object. When a ``mesh:``
enhance request brings no prompt, the front colour view of the mesh's reference render (on
white) is captioned by a model read from a local folder (``FOUNDRY_CAPTION_PATH`` or the
``caption_path`` param); a prompt the user gave always wins and the model is never loaded.

The folder is what ``save_pretrained`` of a transformers model and its processor writes (a
released checkpoint's layout). The architecture is read from its ``config.json``
``model_type`` and must be one transformers implements natively (no remote code):

``florence2``  ``Florence2ForConditionalGeneration`` (Florence-2, as Kiss3DGen uses), asked
               for the task :data:`FLORENCE2_TASK`;
``blip``       ``BlipForConditionalGeneration`` (BLIP image captioning), unconditional.

Decoding is greedy, so one image gives one caption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: config.json ``model_type`` -> transformers class that captions with it.
CAPTION_ARCHITECTURES = {
    "florence2": "Florence2ForConditionalGeneration",
    "blip": "BlipForConditionalGeneration",
}
#: Florence-2's task prompt for a long caption (Kiss3DGen's choice).
FLORENCE2_TASK = "<MORE_DETAILED_CAPTION>"

_EXPECTED = (
    "an image-captioning model folder written by save_pretrained (config.json with model_type "
    + " or ".join(repr(k) for k in CAPTION_ARCHITECTURES)
    + ", its weights and its processor files)"
)


class EmptyCaptionError(ValueError):
    """The captioning model gave no words for the image (permanent: give the row a prompt)."""

    retryable = False


@dataclass(frozen=True)
class CaptionModel:
    """A loaded captioning model and how to ask it."""

    model_type: str
    """``florence2`` or ``blip``."""
    model: torch.nn.Module
    """The transformers model, in ``.eval()``, on its device."""
    processor: object
    """Its transformers processor (image processor + tokenizer)."""


def check_caption_folder(path: Path | None) -> str:
    """The ``model_type`` of the captioning model folder at ``path``; raises
    :class:`models.generate.kiss3dgen.weights.WeightsMissingError` naming ``path`` when it is
    absent, has no readable ``config.json`` or holds an architecture not listed in
    :data:`CAPTION_ARCHITECTURES`."""
    from models.generate.kiss3dgen.weights import WeightsMissingError

    if path is None:
        raise WeightsMissingError(None, _EXPECTED, "set FOUNDRY_CAPTION_PATH or params."
                                  "caption_path, or give the row a prompt")
    path = Path(path)
    if not path.is_dir():
        raise WeightsMissingError(path, _EXPECTED, "the folder does not exist")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise WeightsMissingError(path, _EXPECTED, "config.json is missing or unreadable"
                                  ) from None
    if model_type not in CAPTION_ARCHITECTURES:
        raise WeightsMissingError(path, _EXPECTED, f"model_type {model_type!r} is not a "
                                  "captioning architecture transformers runs natively")
    return model_type


def load_caption_model(path: Path, device: torch.device, dtype: torch.dtype) -> CaptionModel:
    """The captioning model at ``path`` (checked by :func:`check_caption_folder`) in
    ``dtype`` on ``device``; a folder that does not load raises ``WeightsMissingError``."""
    import transformers

    from models.generate.kiss3dgen.weights import WeightsMissingError

    model_type = check_caption_folder(path)
    cls = getattr(transformers, CAPTION_ARCHITECTURES[model_type])
    try:
        processor = transformers.AutoProcessor.from_pretrained(str(path))
        model = cls.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise WeightsMissingError(path, _EXPECTED, f"loading failed: {exc}") from None
    return CaptionModel(model_type, model.to(device).eval(), processor)


def get_caption_model(path: Path, device: torch.device,
                      dtype: torch.dtype = torch.float32) -> CaptionModel:
    """The captioning model at ``path``, loaded once per process (:mod:`models.cache`)."""
    from models.generate.kiss3dgen.pipeline import _identity, cached

    return cached("caption", (_identity(Path(path)), str(device), str(dtype)),
                  lambda: load_caption_model(Path(path), device, dtype))


@torch.inference_mode()
def caption_image(captioner: CaptionModel, image: np.ndarray, max_new_tokens: int = 64) -> str:
    """A caption of ``image`` (``(H, W, 3)`` uint8 RGB): greedy decoding of at most
    ``max_new_tokens`` tokens, special tokens and surrounding space removed."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"caption_image takes (H, W, 3) uint8, got {image.shape} {image.dtype}")
    picture = Image.fromarray(image)
    model, processor = captioner.model, captioner.processor
    text = FLORENCE2_TASK if captioner.model_type == "florence2" else None
    inputs = processor(images=picture, text=text, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    # Both are encoder-decoders: generate returns only the decoded caption's ids.
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def front_view(reference: np.ndarray, tile: int) -> np.ndarray:
    """The front colour view (top-left tile, ``(tile, tile, 3)`` uint8) of a bundle image."""
    return np.ascontiguousarray(reference[:tile, :tile, :3])


def caption_with_params(image: np.ndarray, params, what: str) -> str:
    """The caption of ``image`` (``(H, W, 3)`` uint8) by the model at ``params.caption_path``
    on the params' device, at most ``params.caption_max_tokens`` tokens. ``what`` names the
    image in the :class:`EmptyCaptionError` raised when the model gives no words."""
    from models.generate.kiss3dgen.pipeline import resolve_device

    captioner = get_caption_model(Path(params.caption_path), resolve_device(params))
    caption = caption_image(captioner, image, params.caption_max_tokens)
    if not caption:
        raise EmptyCaptionError(f"the captioning model at {params.caption_path} gave an empty "
                                f"caption for {what}; give the row a prompt")
    return caption
