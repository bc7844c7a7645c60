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

- ``controlnet_path`` (3D-to-3D, image-to-3D) a Flux ControlNet folder, see
  :mod:`models.generate.kiss3dgen.controlnet`; ``redux_path`` (image-to-3D) a Flux Redux folder,
  see :mod:`models.generate.kiss3dgen.redux`.

A missing or unusable path raises :class:`WeightsMissingError` (a permanent failure) naming the
path and what was expected there; :func:`check_weights` names every missing path of a
generation at once. How the models fit the GPU is the memory mode
(:mod:`models.generate.kiss3dgen.memory`). Loaded pipelines stay in a per-process cache keyed by
the model identity (resolved paths, file modification times and sizes, dtype, device, memory
mode, compile, pipeline kind, ControlNet), so a worker loads Flux once and reuses it for every
asset.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.cache import ModelKey, clear, get_or_load
from models.generate.kiss3dgen.params import Kiss3DGenParams, check_inputs
from models.generate.kiss3dgen.weights import WeightsMissingError, dtype_kwarg

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


#: Which diffusers pipeline class each generation kind composes from the loaded Flux models.
PIPELINE_KINDS = ("text", "img2img", "controlnet")


def requested_memory_mode(params: Kiss3DGenParams, memory_mode: str | None = None) -> str:
    """The memory mode asked for: ``memory_mode`` (e.g. ``FOUNDRY_FLUX_MEMORY``) over
    ``params.memory_mode``; the legacy ``offload: true`` means ``offload`` when that is
    ``auto``."""
    mode = memory_mode or params.memory_mode
    if params.offload and mode == "auto":
        return "offload"
    return mode


def load_flux(
    params: Kiss3DGenParams,
    *,
    kind: str = "text",
    controlnet_path: Path | None = None,
    memory_mode: str | None = None,
):
    """Load Flux (+ LoRA, + ControlNet) as ``params`` say; no caching.

    ``kind``: ``text`` gives a :class:`diffusers.FluxPipeline`, ``img2img`` a
    ``FluxImg2ImgPipeline``, ``controlnet`` a ``FluxControlNetImg2ImgPipeline`` with the
    ControlNet at ``controlnet_path``. ``memory_mode``: one of
    :data:`models.generate.kiss3dgen.params.MEMORY_MODES` (default ``params.memory_mode``);
    the resolved :class:`models.generate.kiss3dgen.memory.MemoryPlan` is the pipeline's
    ``memory_plan`` attribute. Every model is in ``.eval()``, in the resolved dtype.
    Raises :class:`WeightsMissingError` for absent weights and
    :class:`models.generate.kiss3dgen.memory.MemoryModeError` for a mode this machine cannot
    run.
    """
    from diffusers import (
        FluxControlNetImg2ImgPipeline,
        FluxImg2ImgPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    from models.generate.kiss3dgen.controlnet import check_controlnet_folder, load_controlnet
    from models.generate.kiss3dgen.memory import (
        apply_memory_plan,
        check_memory_mode,
        choose_memory_mode,
        nf4_quantization_config,
        pipeline_component_bytes,
    )

    if kind not in PIPELINE_KINDS:
        raise ValueError(f"kind must be one of {PIPELINE_KINDS}, got {kind!r}")
    check_inputs(params)
    check_weights(params, controlnet_path=controlnet_path if kind == "controlnet" else None,
                  need_controlnet=kind == "controlnet")
    folder, single_file = resolve_flux_paths(params)
    device = resolve_device(params)
    dtype = resolve_dtype(params, device)
    requested = requested_memory_mode(params, memory_mode)
    if requested != "auto":
        check_memory_mode(requested, device)

    extra: dict[str, Any] = {}
    try:
        if single_file is not None:
            extra["transformer"] = FluxTransformer2DModel.from_single_file(
                str(single_file),
                config=str(folder),
                subfolder="transformer",
                local_files_only=True,
                **dtype_kwarg(dtype),
            )
        elif requested == "nf4":
            extra["transformer"] = FluxTransformer2DModel.from_pretrained(
                str(folder),
                subfolder="transformer",
                local_files_only=True,
                quantization_config=nf4_quantization_config(dtype),
                **dtype_kwarg(dtype),
            )
        pipe = FluxPipeline.from_pretrained(
            str(folder), local_files_only=True, **dtype_kwarg(dtype), **extra
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

    if kind == "img2img":
        pipe = _compose(FluxImg2ImgPipeline, pipe)
    elif kind == "controlnet":
        check_controlnet_folder(controlnet_path)
        controlnet = load_controlnet(Path(controlnet_path), dtype)
        pipe = _compose(FluxControlNetImg2ImgPipeline, pipe, controlnet=controlnet)

    plan = choose_memory_mode(requested, device, pipeline_component_bytes(pipe))
    apply_memory_plan(pipe, plan, device, dtype)
    pipe.memory_plan = plan
    if params.compile:
        pipe.transformer.compile()
    return pipe


def _compose(pipeline_class, pipe, **extra):
    """A ``pipeline_class`` sharing ``pipe``'s models (no copies), plus ``extra`` models."""
    import inspect

    wanted = set(inspect.signature(pipeline_class.__init__).parameters) - {"self"}
    shared = {k: v for k, v in pipe.components.items() if k in wanted}
    return pipeline_class(**shared, **extra)


def check_weights(
    params: Kiss3DGenParams,
    *,
    controlnet_path: Path | None = None,
    need_controlnet: bool = False,
    redux_path: Path | None = None,
    need_redux: bool = False,
) -> None:
    """Check every weights path a generation needs before loading any of them.

    Raises one :class:`WeightsMissingError` whose message names **each** missing or unusable
    path (Flux, LoRA, ControlNet, Redux), so a user fixes them all at once.
    """
    from models.generate.kiss3dgen.controlnet import check_controlnet_folder
    from models.generate.kiss3dgen.redux import check_redux_folder

    checks = [lambda: resolve_flux_paths(params)]
    if params.lora_path is not None:
        checks.append(lambda: check_lora_file(Path(params.lora_path)))
    if need_controlnet:
        checks.append(lambda: check_controlnet_folder(controlnet_path))
    if need_redux:
        checks.append(lambda: check_redux_folder(redux_path))
    WeightsMissingError.check_all(checks)


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


def model_identity(
    params: Kiss3DGenParams,
    *,
    kind: str = "text",
    controlnet_path: Path | None = None,
    memory_mode: str | None = None,
) -> tuple:
    """The cache key: what makes two loaded pipelines interchangeable."""
    folder, single_file = resolve_flux_paths(params)
    device = resolve_device(params)
    return (
        _identity(folder),
        None if single_file is None else _identity(single_file),
        None if params.lora_path is None else _identity(Path(params.lora_path)),
        str(resolve_dtype(params, device)),
        str(device),
        requested_memory_mode(params, memory_mode),
        bool(params.compile),
        kind,
        None if controlnet_path is None else _identity(Path(controlnet_path)),
    )


def cached(slot: str, key: tuple, load: Callable[[], Any]) -> Any:
    """The model cached under ``(slot, key)`` in the process's model cache (:mod:`models.cache`),
    loaded with ``load()`` on first use.

    Each slot (``flux``, ``redux``) is a kind of its own holding :data:`MODEL_CACHE_SIZE`
    entries, least recently used dropped first, so a Redux encoder never evicts the Flux
    pipeline it feeds.
    """
    kind = CACHE_KIND if slot == "flux" else f"{CACHE_KIND}-{slot}"
    return get_or_load(ModelKey(kind, key), load, max_entries=MODEL_CACHE_SIZE)


def get_pipeline(
    params: Kiss3DGenParams,
    *,
    kind: str = "text",
    controlnet_path: Path | None = None,
    memory_mode: str | None = None,
):
    """The cached pipeline for ``params`` (see :func:`load_flux`; loaded on first use)."""
    key = model_identity(params, kind=kind, controlnet_path=controlnet_path,
                         memory_mode=memory_mode)
    return cached("flux", key, lambda: load_flux(
        params, kind=kind, controlnet_path=controlnet_path, memory_mode=memory_mode))


def get_redux(path: Path, params: Kiss3DGenParams, memory_mode: str | None = None):
    """The cached Redux image prompt pipeline at ``path``, placed as the memory mode says
    (on the device, or model CPU offload in the offload modes)."""
    from models.generate.kiss3dgen.redux import check_redux_folder, load_redux

    check_redux_folder(path)
    device = resolve_device(params)
    dtype = resolve_dtype(params, device)
    mode = requested_memory_mode(params, memory_mode)

    def load():
        redux = load_redux(Path(path), dtype)
        if mode in ("offload", "sequential") and device.type == "cuda":
            redux.enable_model_cpu_offload(device=device)
        else:
            redux.to(device)
        return redux

    return cached("redux", (_identity(Path(path)), str(dtype), str(device), mode), load)


def clear_cache() -> None:
    """Drop every cached pipeline, Redux encoder, captioning model and Zero123++."""
    clear(CACHE_KIND)
    for slot in ("redux", "caption", "zero123plus"):
        clear(f"{CACHE_KIND}-{slot}")
