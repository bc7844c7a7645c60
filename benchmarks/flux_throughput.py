"""Flux.1-dev transformer throughput for bundle generation (Stage I of ``kiss3dgen``).

The full-size Flux.1-dev transformer architecture (19 double-stream + 38 single-stream blocks,
hidden 3072, 24 heads) with random bf16 weights (timing does not depend on the values),
denoising a 2048 x 1024 bundle (8192 image tokens + 512 T5 tokens) for 20 Euler steps. For
each batch size, with and without ``torch.compile``, it prints: seconds per bundle, transformer
forward passes per second (batched calls and per-sample), peak GPU memory, and model FLOP
utilisation (MFU) against the GPU's dense bf16 peak (``--peak-tflops``; 989 for an H100 SXM).
FLOPs per forward are counted by ``torch.utils.flop_counter`` on one forward (matmuls and
attention), so MFU counts only useful model arithmetic. Text encoding and VAE decoding are not
included (they run once per bundle, not per step).

    python benchmarks/flux_throughput.py                      # GPU: batch 1, 2, 4; eager+compile
    python benchmarks/flux_throughput.py --batch-sizes 1 --no-compile
    python benchmarks/flux_throughput.py --tiny               # any machine: checks the script
    python benchmarks/flux_throughput.py --memory-table       # GPU: memory modes, full pipeline
    python benchmarks/flux_throughput.py --memory-table --tiny

On a machine without CUDA it refuses (the numbers would mean nothing) unless ``--tiny``, which
runs a tiny transformer of the same architecture at 256 x 128.

``--memory-table`` times whole bundles instead (T5 + CLIP encoding, 20 Euler steps, VAE
decode, batch 1) of a full-size random-weight Flux.1-dev pipeline (transformer, T5-XXL, CLIP-L,
VAE; bf16) under each memory mode of ``FOUNDRY_FLUX_MEMORY`` (``--memory-modes``, default
``full,offload,sequential,fp8,nf4``), as :func:`models.generate.kiss3dgen.memory.
apply_memory_plan` places it, and prints peak GPU memory and seconds per bundle per mode. The
pipeline is built once on the CPU and copied for each mode; ``nf4`` needs bitsandbytes (its
transformer is saved to a temporary folder and loaded back quantised). With ``--tiny`` it runs
the tiny pipeline on any machine (modes that need CUDA are reported as skipped).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch

#: The Flux.1-dev transformer (black-forest-labs/FLUX.1-dev, transformer/config.json).
FLUX_DEV = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
#: Flux's VAE down-samples 8x and the transformer packs 2x2 latent patches: 16 px per token.
PIXELS_PER_TOKEN = 16


@dataclass
class Row:
    batch: int
    compiled: bool
    seconds_per_bundle: float
    forwards_per_second: float
    sample_forwards_per_second: float
    peak_gib: float
    tflops: float
    mfu: float


def build_transformer(config: dict, device: torch.device, dtype: torch.dtype):
    """A randomly initialised FluxTransformer2DModel built directly on ``device`` in ``dtype``."""
    from diffusers import FluxTransformer2DModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_inputs(config: dict, batch: int, width: int, height: int, txt_len: int,
                device: torch.device, dtype: torch.dtype) -> dict:
    """Random transformer inputs of a ``width x height`` image and ``txt_len`` text tokens."""
    h, w = height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
    g = torch.Generator(device="cpu").manual_seed(0)
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return {
        "hidden_states": randn(batch, h * w, config["in_channels"]),
        "encoder_hidden_states": randn(batch, txt_len, config["joint_attention_dim"]),
        "pooled_projections": randn(batch, config["pooled_projection_dim"]),
        "txt_ids": torch.zeros(txt_len, 3, device=device, dtype=dtype),
        "img_ids": img_ids.reshape(-1, 3).to(device, dtype),
        "guidance": torch.full([batch], 3.5, device=device, dtype=torch.float32),
    }


def count_flops(model, inputs: dict) -> float:
    """FLOPs of one forward (batch as in ``inputs``), counted by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(timestep=torch.full_like(inputs["guidance"], 0.5).to(inputs["hidden_states"]),
              return_dict=False, **inputs)
    return float(counter.get_total_flops())


def denoise(model, inputs: dict, steps: int) -> torch.Tensor:
    """``steps`` Euler steps on a linear sigma schedule: the sampling loop without the VAE."""
    x = inputs["hidden_states"]
    rest = {k: v for k, v in inputs.items() if k != "hidden_states"}
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    batch = x.shape[0]
    for i in range(steps):
        t = torch.full([batch], float(sigmas[i]), device=x.device, dtype=x.dtype)
        v = model(hidden_states=x, timestep=t, return_dict=False, **rest)[0]
        x = (x.float() + float(sigmas[i + 1] - sigmas[i]) * v.float()).to(x.dtype)
    return x


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(model, config: dict, batch: int, compiled: bool, args, device, dtype,
          flops_per_sample: float) -> Row:
    inputs = make_inputs(config, batch, args.width, args.height, args.txt_len, device, dtype)
    run = model
    if compiled:
        torch._dynamo.reset()
        run = torch.compile(model, mode=args.compile_mode, dynamic=False)
    with torch.inference_mode():
        for _ in range(args.warmup):  # compile + autotune + allocator warm-up
            denoise(run, inputs, min(args.steps, 2))
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            denoise(run, inputs, args.steps)
        _sync(device)
        seconds = (time.perf_counter() - start) / args.repeats
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    forwards = args.steps / seconds
    achieved = flops_per_sample * batch * args.steps / seconds
    return Row(
        batch=batch,
        compiled=compiled,
        seconds_per_bundle=seconds / batch,
        forwards_per_second=forwards,
        sample_forwards_per_second=forwards * batch,
        peak_gib=peak,
        tflops=achieved / 1e12,
        mfu=achieved / (args.peak_tflops * 1e12),
    )


def print_table(rows: list[Row], args, device_name: str, flops_per_sample: float) -> None:
    print()
    print(f"device: {device_name}; image {args.width} x {args.height}, {args.txt_len} text "
          f"tokens, {args.steps} steps; {flops_per_sample / 1e9:,.1f} GFLOP per sample forward; "
          f"peak {args.peak_tflops:g} TFLOPS")
    head = (f"{'batch':>5} {'compile':>7} {'s/bundle':>9} {'fwd/s':>7} {'sample fwd/s':>12} "
            f"{'peak GiB':>9} {'TFLOPS':>8} {'MFU':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.batch:>5} {'yes' if r.compiled else 'no':>7} {r.seconds_per_bundle:>9.3f} "
              f"{r.forwards_per_second:>7.2f} {r.sample_forwards_per_second:>12.2f} "
              f"{r.peak_gib:>9.2f} {r.tflops:>8.3g} {100 * r.mfu:>5.1f}%")


# ------------------------------------------------------------------------- memory table

#: The text encoders and VAE of black-forest-labs/FLUX.1-dev (their config.json files).
FLUX_DEV_T5 = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
    "num_heads": 64, "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new", "is_gated_act": True,
}
FLUX_DEV_CLIP = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "projection_dim": 768, "hidden_act": "quick_gelu",
}
FLUX_DEV_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "latent_channels": 16, "sample_size": 1024,
    "use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.1159,
    "scaling_factor": 0.3611,
}
ALL_MEMORY_MODES = ("full", "offload", "sequential", "fp8", "nf4")


@dataclass
class MemoryRow:
    mode: str
    seconds_per_bundle: float | None
    peak_gib: float | None
    note: str = ""


def build_random_flux_dev(dtype: torch.dtype):
    """A FluxPipeline of the full-size Flux.1-dev architecture with random weights, on the CPU.

    The tokenizers are the tiny local ones (any token id they give exists in the full vocab).
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from models.generate.kiss3dgen.tiny import _clip_tokenizer, _t5_tokenizer

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        transformer = build_transformer(FLUX_DEV, torch.device("cpu"), dtype)
        t5 = T5EncoderModel(T5Config(**FLUX_DEV_T5))
        clip = CLIPTextModel(CLIPTextConfig(**FLUX_DEV_CLIP))
        vae = AutoencoderKL(**FLUX_DEV_VAE)
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    for model in (transformer, t5, clip, vae):
        model.eval().requires_grad_(False)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip,
                        tokenizer=_clip_tokenizer(), text_encoder_2=t5,
                        tokenizer_2=_t5_tokenizer(), transformer=transformer)


def _nf4_transformer(transformer, dtype: torch.dtype):
    """The transformer saved to a temporary folder and loaded back as 4-bit NF4."""
    import tempfile

    from diffusers import FluxTransformer2DModel

    from models.generate.kiss3dgen.memory import nf4_quantization_config

    with tempfile.TemporaryDirectory() as tmp:
        transformer.save_pretrained(tmp)
        return FluxTransformer2DModel.from_pretrained(
            tmp, quantization_config=nf4_quantization_config(dtype), torch_dtype=dtype
        )


def time_memory_mode(base_pipe, mode: str, args, device: torch.device,
                     dtype: torch.dtype) -> MemoryRow:
    """Place a copy of ``base_pipe`` as ``mode`` says and time whole bundles."""
    import copy
    from dataclasses import replace as dc_replace

    from models.generate.kiss3dgen.generate import denoise
    from models.generate.kiss3dgen.memory import (
        MemoryModeError,
        MemoryPlan,
        apply_memory_plan,
        check_memory_mode,
    )
    from models.generate.kiss3dgen.params import Kiss3DGenParams
    from models.generate.kiss3dgen.prompts import bundle_prompts

    try:
        check_memory_mode(mode, device)
    except MemoryModeError as exc:
        return MemoryRow(mode, None, None, f"skipped: {exc}")
    pipe = copy.deepcopy(base_pipe)
    if mode == "nf4":
        pipe.transformer = _nf4_transformer(pipe.transformer, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    apply_memory_plan(pipe, MemoryPlan(mode, "benchmark"), device, dtype)
    params = dc_replace(Kiss3DGenParams(), width=args.width, height=args.height,
                        steps=args.steps, max_sequence_length=args.txt_len)
    clip, t5 = bundle_prompts(["a red ceramic mug with a handle"])
    try:
        denoise(pipe, clip, t5, [0], dc_replace(params, steps=min(2, args.steps)))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            denoise(pipe, clip, t5, [0], params)
        _sync(device)
        seconds = (time.perf_counter() - start) / args.repeats
    except torch.OutOfMemoryError:
        return MemoryRow(mode, None, None, "out of GPU memory")
    finally:
        pipe.remove_all_hooks()
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return MemoryRow(mode, seconds, peak)


def print_memory_table(rows: list[MemoryRow], args, device_name: str) -> None:
    print()
    print(f"device: {device_name}; whole bundles {args.width} x {args.height}, {args.steps} "
          f"steps, batch 1, {args.txt_len} T5 tokens (encode + denoise + VAE decode)")
    head = f"{'memory mode':<12} {'peak GiB':>9} {'s/bundle':>9}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        peak = "-" if r.peak_gib is None else f"{r.peak_gib:.2f}"
        secs = "-" if r.seconds_per_bundle is None else f"{r.seconds_per_bundle:.3f}"
        print(f"{r.mode:<12} {peak:>9} {secs:>9}  {r.note}")


def run_memory_table(args) -> int:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    modes = [m.strip() for m in args.memory_modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(ALL_MEMORY_MODES))
    if unknown:
        print(f"unknown memory modes {unknown}; known: {', '.join(ALL_MEMORY_MODES)}",
              file=sys.stderr)
        return 2
    if args.tiny:
        from models.generate.kiss3dgen.tiny import build_tiny_flux

        dtype = torch.bfloat16 if cuda else torch.float32
        base = build_tiny_flux(0).to(dtype=dtype)
    else:
        dtype = torch.bfloat16
        print("building a random-weight Flux.1-dev pipeline on the CPU ...", flush=True)
        base = build_random_flux_dev(dtype)
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu (--tiny)"
    rows = []
    for mode in modes:
        row = time_memory_mode(base, mode, args, device, dtype)
        rows.append(row)
        print(f"  {mode}: {row.seconds_per_bundle} s/bundle, peak {row.peak_gib} GiB "
              f"{row.note}", flush=True)
    print_memory_table(rows, args, device_name)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="1,2,4", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per bundle")
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--txt-len", type=int, default=512, help="T5 tokens")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="GPU dense bf16 peak in TFLOPS (H100 SXM: 989; H200: 989; A100: 312)")
    p.add_argument("--compile", choices=("both", "on", "off"), default="both",
                   help="run with torch.compile, without, or both")
    p.add_argument("--no-compile", dest="compile", action="store_const", const="off")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                   help="torch.compile mode")
    p.add_argument("--warmup", type=int, default=1, help="warm-up runs (2 steps each)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per configuration")
    p.add_argument("--memory-table", action="store_true",
                   help="time whole bundles under each memory mode (FOUNDRY_FLUX_MEMORY)")
    p.add_argument("--memory-modes", default=",".join(ALL_MEMORY_MODES),
                   help="comma-separated memory modes for --memory-table")
    p.add_argument("--tiny", action="store_true",
                   help="tiny transformer at 256 x 128 (works on CPU; checks the script)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.memory_table and (cuda or args.tiny):
        if args.tiny:
            args.width, args.height = (256, 128) if args.width == 2048 else (args.width,
                                                                              args.height)
            args.txt_len, args.steps = min(args.txt_len, 64), min(args.steps, 4)
        return run_memory_table(args)
    if not cuda and not args.tiny:
        print("flux_throughput: no CUDA device. The full-size Flux benchmark needs a GPU "
              "(~24 GB of bf16 weights); run it on a GPU machine, or pass --tiny to check the "
              "script with a tiny model on this machine.", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    if args.tiny:
        from models.generate.kiss3dgen.tiny import TINY_TRANSFORMER

        config = dict(TINY_TRANSFORMER, in_channels=64)
        if args.width == 2048 and args.height == 1024:
            args.width, args.height = 256, 128
        args.txt_len = min(args.txt_len, 64)
        args.steps = min(args.steps, 4)
        dtype = torch.bfloat16 if cuda else torch.float32
    else:
        config = FLUX_DEV
        dtype = torch.bfloat16
    if args.width % PIXELS_PER_TOKEN or args.height % PIXELS_PER_TOKEN:
        print(f"width and height must be multiples of {PIXELS_PER_TOKEN}, got "
              f"{args.width} x {args.height}", file=sys.stderr)
        return 2
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.compile]

    model = build_transformer(config, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu (--tiny)"
    print(f"transformer: {n_params / 1e9:.2f} B parameters ({'tiny' if args.tiny else 'Flux.1-dev'}"
          f"), {dtype}, on {device_name}")
    flops = count_flops(model, make_inputs(config, 1, args.width, args.height, args.txt_len,
                                           device, dtype))
    rows = []
    for compiled in modes:
        for batch in batches:
            try:
                row = bench(model, config, batch, compiled, args, device, dtype, flops)
            except torch.OutOfMemoryError:
                print(f"batch {batch} compile={compiled}: out of GPU memory", file=sys.stderr)
                torch.cuda.empty_cache()
                continue
            rows.append(row)
            print(f"  batch {batch} compile={'yes' if compiled else 'no'}: "
                  f"{row.seconds_per_bundle:.3f} s/bundle, MFU {100 * row.mfu:.1f}%", flush=True)
    print_table(rows, args, device_name, flops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
