"""LoRA fine-tuning of the Flux transformer on bundle images (Kiss3DGen's training recipe).

The recipe: render every mesh of a captioned library into a 3D bundle image
(:func:`models.render.views.render_bundle`), pair it with its caption in the generator's prompt
format
(CLIP: the bundle sentence; T5: the sentence + caption), and train a LoRA on the transformer's
attention projections with the rectified-flow objective:

    x_t = (1 - s) * x_0 + s * noise,   target = noise - x_0,   loss = |v(x_t, s) - target|^2

with ``s`` drawn from a logit-normal (``sigmoid``) or uniform distribution. Latents and text
embeddings are computed once up front (the VAE and text encoders are frozen), then only the
transformer runs in the loop. LoRAs are saved with ``FluxPipeline.save_lora_weights`` together
with the peft adapter config as metadata, so ``load_lora_weights`` rebuilds the same rank and
alpha. Checkpoints (LoRA + optimiser + step + RNG) are written every ``checkpoint_every`` steps
and a run resumes from the newest one.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.bundle.spec import Bundle
from models.generate.kiss3dgen.prompts import bundle_prompts

#: Attention projections the LoRA adapts: image stream, text stream ("added") and outputs.
LORA_TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
LORA_FILE = "kiss3dgen_lora.safetensors"
CHECKPOINT_LORA = "lora.safetensors"
CHECKPOINT_STATE = "state.pt"
ADAPTER = "default"


@dataclass
class LoraTrainConfig:
    """LoRA training hyper-parameters (every field is a CLI/flow option)."""

    rank: int = 16
    """LoRA rank r of every adapted projection."""
    alpha: float | None = None
    """LoRA alpha (the update is scaled by alpha / rank); default: equal to rank."""
    steps: int = 1000
    """Optimiser steps."""
    lr: float = 1e-4
    """AdamW learning rate (constant after warm-up)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    weight_decay: float = 1e-4
    """AdamW weight decay on the LoRA matrices."""
    batch_size: int = 1
    """Bundles per step."""
    timestep_sampling: str = "sigmoid"
    """``sigmoid`` (logit-normal: sigmoid of a standard normal, as SD3/Flux trainers) or
    ``uniform`` sigma sampling."""
    guidance: float = 1.0
    """Value fed to Flux-dev's guidance embedding during training."""
    max_sequence_length: int = 512
    """T5 token budget of the prompts."""
    tile: int = 512
    """Bundle tile size of the training images (image = 2 tile x 4 tile)."""
    checkpoint_every: int = 250
    """Write a resumable checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    seed: int = 0
    """Seed of LoRA init, batch order, noise and sigmas."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    dtype: str = "auto"
    """Frozen weights' dtype: ``auto`` = bfloat16 on CUDA, float32 on CPU (LoRA in float32)."""
    device: str = "auto"
    """``auto`` = CUDA when available, else CPU."""
    gradient_checkpointing: bool = False
    """Recompute transformer activations in backward (needed for full-size Flux on 80 GB)."""
    target_modules: tuple[str, ...] = field(default=LORA_TARGET_MODULES)
    """Module names (suffixes) that get LoRA adapters."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.timestep_sampling not in ("sigmoid", "uniform"):
            raise ValueError(
                f"timestep_sampling must be sigmoid or uniform, got {self.timestep_sampling!r}"
            )
        if self.tile % 16:
            raise ValueError(f"tile must be a multiple of 16, got {self.tile}")
        self.target_modules = tuple(self.target_modules)


@dataclass(frozen=True)
class TrainSample:
    """One training pair: a bundle PNG and its caption."""

    image_path: Path
    caption: str


@dataclass
class TrainResult:
    """What a training run produced: the LoRA file, per-step losses, evaluation losses."""

    lora_path: Path
    steps: int
    losses: list[float]
    eval_loss_start: float
    eval_loss_end: float


# ---------------------------------------------------------------------------------------------
# dataset


def load_library_mesh(library_path: str | Path, entry):
    """The mesh of a :class:`models.library.format.LibraryEntry` (its file's own frame, one
    mesh)."""
    from models.library.format import resolve_mesh_path

    path = resolve_mesh_path(library_path, entry)
    try:
        from models.geometry.mesh import load_mesh
    except ImportError:  # the 3D core's loader is preferred; trimesh reads the same files
        import trimesh

        return trimesh.load(path, force="mesh")
    return load_mesh(path)


def _default_render(mesh, tile: int, up: str) -> Bundle:
    try:
        from models.render.views import render_bundle
    except ImportError as exc:  # the 3D core renders bundles; without it there is no dataset
        raise ImportError(
            "LoRA training renders the library with models.render.views.render_bundle, which is "
            f"not importable: {exc}"
        ) from exc
    return render_bundle(mesh, tile=tile, up=up)


def build_dataset(
    library_path: str | Path,
    cache_dir: str | Path,
    tile: int = 512,
    render: Callable[..., Bundle] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[TrainSample]:
    """Render every library mesh into ``<cache_dir>/<id>.png`` (+ sidecar); reuse existing ones.

    ``library_path``: a folder with ``library.jsonl``
    (:func:`models.library.format.read_library_jsonl`).
    ``render(mesh, tile, up) -> Bundle`` defaults to :func:`models.render.views.render_bundle`
    (which normalises the mesh and turns a ``z``-up file +Y up). Writes
    ``<cache_dir>/dataset.jsonl`` (``{"image", "caption"}`` per line) and returns the samples.
    """
    render = render or _default_render
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    from models.library.format import read_library_jsonl

    entries = read_library_jsonl(Path(library_path) / "library.jsonl")
    if not entries:
        raise ValueError(f"library {library_path} has no entries to train on")
    samples = []
    for k, entry in enumerate(entries):
        image_path = cache_dir / f"{entry.id}.png"
        if not image_path.exists() or Bundle.load(image_path).tile != tile:
            bundle = render(load_library_mesh(library_path, entry), tile, entry.up)
            bundle.save(image_path)
        samples.append(TrainSample(image_path=image_path, caption=entry.caption))
        if progress is not None:
            progress(k + 1, len(entries))
    lines = [json.dumps({"image": s.image_path.name, "caption": s.caption}) for s in samples]
    (cache_dir / "dataset.jsonl").write_text("\n".join(lines) + "\n")
    return samples


def read_dataset(cache_dir: str | Path) -> list[TrainSample]:
    """Samples listed in ``<cache_dir>/dataset.jsonl`` (as :func:`build_dataset` wrote them)."""
    cache_dir = Path(cache_dir)
    rows = [json.loads(x) for x in (cache_dir / "dataset.jsonl").read_text().splitlines() if x]
    return [TrainSample(cache_dir / r["image"], r["caption"]) for r in rows]


# ---------------------------------------------------------------------------------------------
# LoRA adapters and files


def add_lora(transformer, rank: int, alpha: float | None = None,
             target_modules: tuple[str, ...] = LORA_TARGET_MODULES,
             init_lora_weights: bool | str = "gaussian", adapter_name: str = ADAPTER):
    """Freeze ``transformer`` and add a trainable peft LoRA adapter; returns the LoraConfig.

    ``init_lora_weights``: ``"gaussian"``/``True`` start as a no-op (B = 0); ``False`` gives
    random A and B (a LoRA that changes the output, for tests).
    """
    from peft import LoraConfig

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        init_lora_weights=init_lora_weights,
        target_modules=list(target_modules),
    )
    transformer.requires_grad_(False)
    transformer.add_adapter(config, adapter_name=adapter_name)
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # train the adapter in float32 whatever the base dtype
    return config


def lora_state_dict(transformer, adapter_name: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's tensors, keyed as peft saves them (``<module>.lora_A.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer, adapter_name=adapter_name)


def save_lora(transformer, path: str | Path, adapter_name: str = ADAPTER) -> Path:
    """Save the adapter as a ``load_lora_weights``-compatible ``.safetensors`` at ``path``.

    Keys ``transformer.<module>.lora_{A,B}.weight`` and the adapter's ``LoraConfig`` as
    ``transformer_lora_adapter_metadata`` (so rank, alpha and targets survive the round trip).
    """
    from diffusers import FluxPipeline

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA file must end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = {k: v.detach().to("cpu").contiguous() for k, v in
              lora_state_dict(transformer, adapter_name).items()}
    metadata = transformer.peft_config[adapter_name].to_dict()
    tmp_name = path.name + ".tmp.safetensors"
    FluxPipeline.save_lora_weights(
        save_directory=str(path.parent),
        transformer_lora_layers=layers,
        weight_name=tmp_name,
        transformer_lora_adapter_metadata=metadata,
    )
    (path.parent / tmp_name).replace(path)  # atomic: a half-written LoRA never has the name
    return path


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, transformer adapter config)`` of a saved LoRA file (config ``{}`` if none)."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensors[key] = f.get_tensor(key)
        meta = f.metadata() or {}
    # diffusers stores every component's LoraConfig flattened as "<component>.<field>".
    flat = json.loads(meta.get("lora_adapter_metadata", "{}"))
    config = {
        k.removeprefix("transformer."): v for k, v in flat.items() if k.startswith("transformer.")
    }
    return tensors, config


# ---------------------------------------------------------------------------------------------
# training


def _resolve(device_name: str, dtype_name: str) -> tuple[torch.device, torch.dtype]:
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device_name == "auto" else device_name
    )
    if dtype_name == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, dtype_name)
    return device, dtype


def _load_image(path: Path, tile: int) -> np.ndarray:
    bundle = Bundle.load(path)
    if bundle.tile != tile:
        raise ValueError(f"{path}: bundle tile {bundle.tile}, training expects {tile}")
    return bundle.image


@dataclass
class _Encoded:
    """Frozen-model outputs for the whole dataset: packed latents and text embeddings."""

    latents: torch.Tensor  # (N, L_img, C) packed VAE latents
    prompt_embeds: torch.Tensor  # (N, L_txt, D_t5)
    pooled: torch.Tensor  # (N, D_clip)
    text_ids: torch.Tensor  # (L_txt, 3)
    image_ids: torch.Tensor  # (L_img, 3)


@torch.no_grad()
def encode_dataset(pipe, samples: list[TrainSample], tile: int, max_sequence_length: int,
                   device: torch.device) -> _Encoded:
    """Run the frozen VAE and text encoders once over the dataset."""
    height, width = 2 * tile, 4 * tile
    clip_prompts, t5_prompts = bundle_prompts([s.caption for s in samples])
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=clip_prompts, prompt_2=t5_prompts, device=device,
        max_sequence_length=max_sequence_length,
    )
    vae = pipe.vae
    latents = []
    for s in samples:
        image = torch.from_numpy(_load_image(s.image_path, tile).copy()).permute(2, 0, 1)[None]
        image = (image.float() / 127.5 - 1.0).to(device, vae.dtype)
        # The mode of the posterior: deterministic targets (Flux trainers also use the mode
        # when latents are cached).
        lat = vae.encode(image).latent_dist.mode()
        lat = (lat - vae.config.shift_factor) * vae.config.scaling_factor
        c, h, w = lat.shape[1:]
        latents.append(pipe._pack_latents(lat, 1, c, h, w))
    # Latent grid of the bundle (what prepare_latents computes for generation).
    h = 2 * (height // (pipe.vae_scale_factor * 2))
    w = 2 * (width // (pipe.vae_scale_factor * 2))
    image_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, prompt_embeds.dtype)
    return _Encoded(
        latents=torch.cat(latents).float(),
        prompt_embeds=prompt_embeds,
        pooled=pooled,
        text_ids=text_ids,
        image_ids=image_ids,
    )


def sample_sigmas(n: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """``(n,)`` float32 flow-matching noise levels in (0, 1)."""
    if mode == "sigmoid":
        return torch.sigmoid(torch.randn(n, generator=generator))
    return torch.rand(n, generator=generator).clamp(1e-3, 1 - 1e-3)


def flow_matching_loss(transformer, enc: _Encoded, idx: torch.Tensor, noise: torch.Tensor,
                       sigmas: torch.Tensor, guidance: float) -> torch.Tensor:
    """Mean squared error between predicted and true velocity ``noise - x_0`` (float32)."""
    device = enc.latents.device
    x0 = enc.latents[idx]
    noise = noise.to(device)
    s = sigmas.to(device)[:, None, None]
    x_t = (1.0 - s) * x0 + s * noise
    dtype = enc.prompt_embeds.dtype
    batch = len(idx)
    guidance_t = None
    if transformer.config.guidance_embeds:
        guidance_t = torch.full([batch], guidance, device=device, dtype=torch.float32)
    pred = transformer(
        hidden_states=x_t.to(dtype),
        timestep=sigmas.to(device, dtype),
        guidance=guidance_t,
        pooled_projections=enc.pooled[idx],
        encoder_hidden_states=enc.prompt_embeds[idx],
        txt_ids=enc.text_ids,
        img_ids=enc.image_ids,
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(pred.float(), (noise - x0).float())


def evaluation_loss(transformer, enc: _Encoded, config: LoraTrainConfig, seed: int = 12345
                    ) -> float:
    """Loss on a fixed batch (every sample, fixed noise, sigmas at 0.25/0.5/0.75)."""
    g = torch.Generator().manual_seed(seed)
    n = enc.latents.shape[0]
    total = 0.0
    levels = (0.25, 0.5, 0.75)
    with torch.no_grad():
        for level in levels:
            noise = torch.randn(enc.latents.shape, generator=g)
            sigmas = torch.full((n,), level)
            idx = torch.arange(n, device=enc.latents.device)
            total += float(flow_matching_loss(transformer, enc, idx, noise, sigmas,
                                              config.guidance))
    return total / len(levels)


def _checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / CHECKPOINT_STATE).is_file())


def _save_checkpoint(out_dir: Path, transformer, optimizer, lr_scheduler, step: int,
                     losses: list[float],
                     rng: torch.Generator, config: LoraTrainConfig) -> Path:
    folder = out_dir / "checkpoints" / f"step_{step:07d}"
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_lora(transformer, tmp / CHECKPOINT_LORA)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "losses": losses,
            "rng": rng.get_state(),
            "python_rng": random.getstate(),
            "config": asdict(config),
        },
        tmp / CHECKPOINT_STATE,
    )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    for old in _checkpoints(out_dir)[: -max(config.keep_checkpoints, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _lr_lambda(config: LoraTrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if config.warmup_steps <= 0:
            return 1.0
        return min(1.0, (step + 1) / config.warmup_steps)

    return factor


def train_lora(
    samples: list[TrainSample],
    flux_path: str | Path,
    out_dir: str | Path,
    config: LoraTrainConfig,
    resume: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    flux_base_path: str | Path | None = None,
) -> TrainResult:
    """Train a LoRA on ``samples`` and save ``<out_dir>/kiss3dgen_lora.safetensors``.

    ``flux_path``: the base Flux weights (diffusers folder or single file, as the generator
    loads them). ``resume``: continue from the newest checkpoint in ``<out_dir>/checkpoints``
    (fresh start when there is none). ``progress(step, total, loss)`` after every step.
    Returns the LoRA path, the per-step losses and the fixed-batch evaluation loss before and
    after training.
    """
    from models.generate.kiss3dgen.params import Kiss3DGenParams
    from models.generate.kiss3dgen.pipeline import load_flux

    if not samples:
        raise ValueError("no training samples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device, dtype = _resolve(config.device, config.dtype)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    params = Kiss3DGenParams(
        flux_path=Path(flux_path),
        flux_base_path=None if flux_base_path is None else Path(flux_base_path),
        width=4 * config.tile,
        height=2 * config.tile,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
    )
    pipe = load_flux(params)  # not the generator's cache: training modifies the transformer
    enc = encode_dataset(pipe, samples, config.tile, config.max_sequence_length, device)
    transformer = pipe.transformer
    # The frozen encoders are no longer needed; free their memory before training.
    pipe.text_encoder = pipe.text_encoder_2 = pipe.vae = None
    if device.type == "cuda":
        torch.cuda.empty_cache()

    add_lora(transformer, config.rank, config.alpha, config.target_modules)
    if config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))

    rng = torch.Generator().manual_seed(config.seed)
    start, losses = 0, []
    existing = _checkpoints(out_dir) if resume else []
    if existing:
        from peft.utils import set_peft_model_state_dict

        last = existing[-1]
        state = torch.load(last / CHECKPOINT_STATE, map_location="cpu", weights_only=False)
        tensors, _ = read_lora_file(last / CHECKPOINT_LORA)
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        set_peft_model_state_dict(transformer, tensors, adapter_name=ADAPTER)
        optimizer.load_state_dict(state["optimizer"])
        start, losses = int(state["step"]), list(state["losses"])
        rng.set_state(state["rng"])
        random.setstate(state["python_rng"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])

    transformer.eval()
    eval_start = evaluation_loss(transformer, enc, config)
    transformer.train()
    n = enc.latents.shape[0]
    for step in range(start, config.steps):
        idx = torch.randint(0, n, (config.batch_size,), generator=rng)
        noise = torch.randn((config.batch_size, *enc.latents.shape[1:]), generator=rng)
        sigmas = sample_sigmas(config.batch_size, config.timestep_sampling, rng)
        loss = flow_matching_loss(transformer, enc, idx.to(device), noise, sigmas,
                                  config.guidance)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"LoRA training loss is {loss_value} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        losses.append(loss_value)
        done = step + 1
        if progress is not None:
            progress(done, config.steps, loss_value)
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            _save_checkpoint(out_dir, transformer, optimizer, lr_scheduler, done, losses, rng,
                             config)

    transformer.eval()
    eval_end = evaluation_loss(transformer, enc, config)
    _save_checkpoint(out_dir, transformer, optimizer, lr_scheduler, config.steps, losses, rng,
                     config)
    lora_path = save_lora(transformer, out_dir / LORA_FILE)
    (out_dir / "train_config.json").write_text(
        json.dumps({**asdict(config), "flux_path": str(flux_path), "samples": len(samples),
                    "eval_loss_start": eval_start, "eval_loss_end": eval_end}, indent=1)
    )
    return TrainResult(lora_path=lora_path, steps=config.steps, losses=losses,
                       eval_loss_start=eval_start, eval_loss_end=eval_end)
