"""Fitting Flux into GPU memory: the memory modes of ``FOUNDRY_FLUX_MEMORY`` and ``auto``.

=============  =====================================================================  ===========
mode           what it does                                                           needs
=============  =====================================================================  ===========
``full``       every model resident on the device                                     ~35 GB*
``fp8``        transformer (and ControlNet) weights stored as float8 e4m3, each layer ~24 GB*
               upcast to the compute dtype when it runs (diffusers layerwise casting:
               weight-only, no scaling; quality close to bf16)
``offload``    model CPU offload: each model moves to the GPU while it runs           ~24 GB*
``sequential`` sequential CPU offload: each sub-module moves while it runs (slowest)  ~3 GB
``nf4``        4-bit NF4 transformer via bitsandbytes (loaded quantised; CUDA only)   ~18 GB*
``auto``       the first of full, offload, fp8, sequential whose estimate fits the
               free GPU memory; ``full`` on a CPU
=============  =====================================================================  ===========

(* Flux.1-dev in bf16 at 2048 x 1024, plus ControlNet-Union where loaded; estimates are
weights plus :data:`ACTIVATION_MARGIN_BYTES`.) Offload modes need an accelerator to offload
*to*: ``sequential`` and ``nf4`` raise :class:`MemoryModeError` on a CPU; ``offload`` on a CPU
installs its hooks but moves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.generate.kiss3dgen.params import MEMORY_MODES

#: Activations, VAE decode and allocator slack at 2048 x 1024 (measured order of magnitude).
ACTIVATION_MARGIN_BYTES = 6 * 2**30
#: Models whose weights the fp8 mode stores in float8.
FP8_MODELS = ("transformer", "controlnet")
#: Modes ``auto`` picks from, best first: lossless before lossy, then the slowest. Model offload
#: keeps the transformer (and ControlNet) resident and moves the T5 once per prompt, so it is
#: nearly as fast as ``full``; fp8 rounds the weights.
AUTO_ORDER = ("full", "offload", "fp8", "sequential")


class MemoryModeError(ValueError):
    """A memory mode that cannot work on this machine (permanent)."""

    retryable = False


@dataclass(frozen=True)
class MemoryPlan:
    """A resolved memory mode (never ``auto``) and why it was chosen."""

    mode: str
    """One of ``full``, ``fp8``, ``offload``, ``sequential``, ``nf4``."""
    reason: str
    """One line: the request or the free memory against the estimate."""


def weight_bytes(module: torch.nn.Module | None) -> int:
    """Bytes of a model's parameters and buffers (0 for ``None`` or a non-module)."""
    if not isinstance(module, torch.nn.Module):
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_bytes(component_bytes: dict[str, int], mode: str) -> int:
    """Peak device bytes of ``mode`` for models of ``component_bytes`` (name -> bytes)."""
    total = sum(component_bytes.values())
    largest = max(component_bytes.values(), default=0)
    if mode == "full":
        return total + ACTIVATION_MARGIN_BYTES
    if mode == "fp8":
        halved = sum(b // 2 for name, b in component_bytes.items() if name in FP8_MODELS)
        return total - halved + ACTIVATION_MARGIN_BYTES
    if mode == "offload":
        # The transformer and its ControlNet run at every step: both must be resident.
        stepping = sum(b for name, b in component_bytes.items() if name in FP8_MODELS)
        return max(largest, stepping) + ACTIVATION_MARGIN_BYTES
    if mode == "sequential":
        return ACTIVATION_MARGIN_BYTES
    raise ValueError(f"no estimate for memory mode {mode!r}")


def free_device_bytes(device: torch.device) -> int | None:
    """Free bytes on a CUDA ``device`` (``None`` for a CPU)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def choose_memory_mode(
    requested: str,
    device: torch.device,
    component_bytes: dict[str, int],
    free_bytes: int | None = None,
) -> MemoryPlan:
    """Resolve ``requested`` (one of :data:`MEMORY_MODES`) for ``device``.

    ``component_bytes``: weight bytes of each model that runs on the device (name -> bytes, in
    the compute dtype). ``free_bytes``: free device memory (default: asked of CUDA). Raises
    :class:`MemoryModeError` for a mode this device cannot run.
    """
    if requested not in MEMORY_MODES:
        raise MemoryModeError(f"memory mode must be one of {MEMORY_MODES}, got {requested!r}")
    if requested != "auto":
        check_memory_mode(requested, device)
        return MemoryPlan(requested, f"requested {requested}")
    if device.type != "cuda":
        return MemoryPlan("full", f"auto on {device.type}: nothing to offload to")
    free = free_device_bytes(device) if free_bytes is None else free_bytes
    for mode in AUTO_ORDER:
        need = estimate_bytes(component_bytes, mode)
        if free >= need:
            return MemoryPlan(
                mode, f"auto: {free / 2**30:.1f} GiB free >= {need / 2**30:.1f} GiB for {mode}"
            )
    return MemoryPlan(
        "sequential", f"auto: {free / 2**30:.1f} GiB free, below every estimate; sequential"
    )


def check_memory_mode(mode: str, device: torch.device) -> None:
    """Raise :class:`MemoryModeError` naming what is missing when ``mode`` cannot run here."""
    if mode == "sequential" and device.type != "cuda":
        raise MemoryModeError(
            f"memory mode sequential offloads to a CUDA GPU; the device is {device}: use "
            "full or fp8 on this machine"
        )
    if mode == "nf4":
        if device.type != "cuda":
            raise MemoryModeError(
                f"memory mode nf4 needs bitsandbytes on a CUDA GPU; the device is {device}: "
                "use fp8 on this machine"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise MemoryModeError(
                "memory mode nf4 needs the bitsandbytes package (pip install bitsandbytes); "
                "or use fp8"
            ) from exc


def nf4_quantization_config(compute_dtype: torch.dtype):
    """The diffusers bitsandbytes config of the ``nf4`` mode (4-bit NF4, double quantisation)."""
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def apply_memory_plan(pipe, plan: MemoryPlan, device: torch.device, dtype: torch.dtype) -> None:
    """Place ``pipe`` (a diffusers pipeline) on ``device`` as ``plan`` says.

    ``fp8`` stores the weights of :data:`FP8_MODELS` (those the pipeline has) as float8 e4m3
    with ``dtype`` compute; ``nf4`` expects its transformer already loaded quantised.
    """
    if plan.mode == "fp8":
        for name in FP8_MODELS:
            model = getattr(pipe, name, None)
            if model is not None:
                model.enable_layerwise_casting(
                    storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype
                )
    if plan.mode == "offload":
        pipe.enable_model_cpu_offload(device=device)
    elif plan.mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif plan.mode == "nf4":
        # bitsandbytes modules are placed at load; move only the rest.
        for name, model in pipe.components.items():
            if isinstance(model, torch.nn.Module) and name != "transformer":
                model.to(device)
    else:
        pipe.to(device)


def pipeline_component_bytes(pipe) -> dict[str, int]:
    """Weight bytes of each model of a diffusers pipeline (name -> bytes)."""
    return {
        name: weight_bytes(model)
        for name, model in pipe.components.items()
        if isinstance(model, torch.nn.Module)
    }
