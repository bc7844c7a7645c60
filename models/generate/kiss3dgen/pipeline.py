"""Loading Flux (+ the Kiss3DGen LoRA) from local files, with a per-process model cache.

What the loader expects on disk:

- ``flux_path`` a **diffusers folder**: ``model_index.json`` and the sub-folders
  ``transformer/``, ``vae/``, ``text_encoder/`` (CLIP-L), ``text_encoder_2/`` (T5-XXL),
  ``tokenizer/``, ``tokenizer_2/``, ``scheduler/`` (what ``FluxPipeline.save_pretrained`` writes
  and what the ``black-forest-labs/FLUX.1-dev`` repository holds). Loaded with
  ``FluxPipeline.from_pretrained(local_files_only=True)``.
- or ``flux_path`` a **single ``.safetensors`` transformer checkpoint** (the original BFL
  ``flux1-dev.safetensors`` layout or a diffusers-keyed transformer state dict), loaded with
  ``FluxTransformer2DModel.from_single_file``. A single file holds only the transformer, so the
  rest of the pipeline (VAE, both text encoders and tokenizers, scheduler, and
  ``transformer/config.json``) comes from a diffusers folder: ``flux_base_path``, or by default
  the checkpoint's own folder when that folder holds ``model_index.json``. The base folder's
  ``transformer/`` needs only its ``config.json``.
- ``lora_path`` (optional) a LoRA ``.safetensors`` file that ``FluxPipeline.load_lora_weights``
  reads: the published Kiss3DGen ``rgb_normal.safetensors`` (diffusers/peft keys
  ``transformer.<module>.lora_A.weight``), kohya-style keys, or a file saved by
  :func:`models.generate.kiss3dgen.train.save_lora` (which also stores the adapter config, so alpha
  and
  rank survive the round trip). It is loaded as the adapter :data:`ADAPTER_NAME`; its strength
  is set per call with :func:`set_lora_scale`.

A missing or unusable path raises :class:`WeightsMissingError` (a permanent failure) naming the
path and what was expected there. Loaded pipelines stay in a per-process cache keyed by the
model identity (resolved paths, file modification times and sizes, dtype, device, offload,
compile), so a worker loads Flux once and reuses it for every asset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.cache import ModelKey, clear, get_or_load
from models.generate.kiss3dgen.params import Kiss3DGenParams, check_inputs

#: Name of the LoRA adapter inside the transformer.
ADAPTER_NAME = "kiss3dgen"
#: Sub-folders a Flux diffusers folder must have.
FLUX_FOLDER_PARTS = (
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)
#: Pipelines kept loaded per process. One Flux.1-dev is ~24 GB in bf16; keep one.
MODEL_CACHE_SIZE = 1
#: Kind of the pipelines in :mod:`models.cache`.
CACHE_KIND = "kiss3dgen"

_FOLDER_EXPECTED = (
    "a Flux diffusers folder (model_index.json and sub-folders "
    + ", ".join(FLUX_FOLDER_PARTS)
    + ")"
)


class WeightsMissingError(FileNotFoundError):
    """A weights path that is absent or does not hold what the generator needs (permanent)."""

    retryable = False

    def __init__(self, path: str | Path | None, expected: str, detail: str = "") -> None:
        self.path = None if path is None else Path(path)
        self.expected = expected
        where = "no path given" if path is None else f"{path}"
        message = f"kiss3dgen weights: {where}: expected {expected}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


def resolve_device(params: Kiss3DGenParams) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if params.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(params.device)


def resolve_dtype(params: Kiss3DGenParams, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA, float32 on CPU (CPU bf16 matmuls are slow)."""
    if params.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, params.dtype)


def _identity(path: Path) -> tuple:
    """(resolved path, newest mtime_ns, total size, file count): changes when any file does."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return (str(path), st.st_mtime_ns, st.st_size, 1)
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return (
        str(path),
        max((s.st_mtime_ns for s in stats), default=0),
        sum(s.st_size for s in stats),
        len(stats),
    )


def check_flux_folder(folder: Path, need_transformer_weights: bool = True) -> None:
    """Raise :class:`WeightsMissingError` unless ``folder`` is a Flux diffusers folder."""
    if not folder.exists():
        raise WeightsMissingError(folder, _FOLDER_EXPECTED, "the path does not exist")
    if not folder.is_dir():
        raise WeightsMissingError(folder, _FOLDER_EXPECTED, "not a folder")
    if not (folder / "model_index.json").is_file():
        raise WeightsMissingError(folder, _FOLDER_EXPECTED, "model_index.json is missing")
    missing = [part for part in FLUX_FOLDER_PARTS if not (folder / part).is_dir()]
    if missing:
        raise WeightsMissingError(folder, _FOLDER_EXPECTED, f"missing sub-folders {missing}")
    if not (folder / "transformer" / "config.json").is_file():
        raise WeightsMissingError(folder, _FOLDER_EXPECTED, "transformer/config.json is missing")
    if need_transformer_weights and not any((folder / "transformer").glob("*.safetensors")):
        raise WeightsMissingError(
            folder, _FOLDER_EXPECTED, "transformer/ holds no .safetensors weights"
        )


def resolve_flux_paths(params: Kiss3DGenParams) -> tuple[Path, Path | None]:
    """``(diffusers folder, single-file transformer checkpoint or None)``, checked on disk."""
    flux = params.flux_path
    if flux is None:
        raise WeightsMissingError(
            None,
            f"{_FOLDER_EXPECTED} or a .safetensors transformer checkpoint",
            "set FOUNDRY_FLUX_PATH or the manifest's params.flux_path",
        )
    flux = Path(flux).expanduser()
    if flux.is_file() or flux.suffix == ".safetensors":
        if not flux.is_file():
            raise WeightsMissingError(
                flux, "a Flux transformer .safetensors checkpoint", "the file does not exist"
            )
        if flux.suffix != ".safetensors":
            raise WeightsMissingError(
                flux, f"{_FOLDER_EXPECTED} or a .safetensors transformer checkpoint"
            )
        base = params.flux_base_path or flux.parent
        if params.flux_base_path is None and not (base / "model_index.json").is_file():
            raise WeightsMissingError(
                base,
                f"{_FOLDER_EXPECTED} beside the single-file checkpoint {flux.name}, "
                "or params.flux_base_path naming one",
                "a single .safetensors holds only the transformer",
            )
        check_flux_folder(Path(base).expanduser(), need_transformer_weights=False)
        return Path(base).expanduser(), flux
    check_flux_folder(flux)
    return flux, None


def check_lora_file(path: Path) -> None:
    """Raise :class:`WeightsMissingError` unless ``path`` is an existing ``.safetensors`` file."""
    expected = "a Flux LoRA .safetensors file (e.g. Kiss3DGen's rgb_normal.safetensors)"
    if not path.exists():
        raise WeightsMissingError(path, expected, "the file does not exist")
    if not path.is_file() or path.suffix != ".safetensors":
        raise WeightsMissingError(path, expected)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # diffusers >= 0.36 renamed from_pretrained's ``torch_dtype`` to ``dtype``.
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def load_flux(params: Kiss3DGenParams):
    """Load a :class:`diffusers.FluxPipeline` (+ LoRA) as ``params`` say; no caching.

    Every model is in ``.eval()``; the pipeline sits on the resolved device (or has model CPU
    offload enabled), in the resolved dtype.
    """
    from diffusers import FluxPipeline, FluxTransformer2DModel

    check_inputs(params)
    folder, single_file = resolve_flux_paths(params)
    if params.lora_path is not None:
        check_lora_file(Path(params.lora_path))
    device = resolve_device(params)
    dtype = resolve_dtype(params, device)

    extra: dict[str, Any] = {}
    try:
        if single_file is not None:
            extra["transformer"] = FluxTransformer2DModel.from_single_file(
                str(single_file),
                config=str(folder),
                subfolder="transformer",
                local_files_only=True,
                **_dtype_kwarg(dtype),
            )
        pipe = FluxPipeline.from_pretrained(
            str(folder), local_files_only=True, **_dtype_kwarg(dtype), **extra
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        what = single_file or folder
        raise WeightsMissingError(
            what, "loadable Flux weights", f"{type(exc).__name__}: {exc}"
        ) from exc

    if params.lora_path is not None:
        load_lora(pipe, Path(params.lora_path))

    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).eval()
    if params.offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if params.compile:
        pipe.transformer.compile()
    return pipe


def load_lora(pipe, path: Path) -> None:
    """Load the LoRA at ``path`` into ``pipe.transformer`` as adapter :data:`ADAPTER_NAME`."""
    check_lora_file(path)
    try:
        pipe.load_lora_weights(str(path), adapter_name=ADAPTER_NAME)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise WeightsMissingError(
            path, "a Flux LoRA .safetensors matching this transformer", f"{exc}"
        ) from exc
    if ADAPTER_NAME not in pipe.get_list_adapters().get("transformer", []):
        raise WeightsMissingError(
            path,
            "a Flux LoRA .safetensors matching this transformer",
            "no LoRA weights in it apply to the transformer",
        )


def set_lora_scale(pipe, scale: float) -> None:
    """Set the strength of the :data:`ADAPTER_NAME` adapter (no-op when none is loaded)."""
    if ADAPTER_NAME in pipe.get_list_adapters().get("transformer", []):
        pipe.set_adapters([ADAPTER_NAME], adapter_weights=[float(scale)])


def model_identity(params: Kiss3DGenParams) -> tuple:
    """The cache key: what makes two loaded pipelines interchangeable."""
    folder, single_file = resolve_flux_paths(params)
    device = resolve_device(params)
    return (
        _identity(folder),
        None if single_file is None else _identity(single_file),
        None if params.lora_path is None else _identity(Path(params.lora_path)),
        str(resolve_dtype(params, device)),
        str(device),
        bool(params.offload),
        bool(params.compile),
    )


def get_pipeline(params: Kiss3DGenParams):
    """The cached pipeline for ``params`` (loaded on first use; the process's model cache holds
    :data:`MODEL_CACHE_SIZE` pipelines, least recently used dropped first)."""
    key = ModelKey(CACHE_KIND, model_identity(params))
    return get_or_load(key, lambda: load_flux(params), max_entries=MODEL_CACHE_SIZE)


def clear_cache() -> None:
    """Drop every cached pipeline."""
    clear(CACHE_KIND)
