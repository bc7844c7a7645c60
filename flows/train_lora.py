"""The ``train-lora`` flow: render a captioned mesh library into bundles, train a Flux LoRA.

Kiss3DGen's recipe (see :mod:`models.kiss3dgen.train`): every library mesh becomes a 3D bundle
image with its caption in the generator's prompt format, and a LoRA on the Flux transformer's
attention projections learns the flow-matching objective on them. The output folder gets
``kiss3dgen_lora.safetensors`` (loadable as the generator's ``lora_path``), resumable
checkpoints and ``train_config.json``.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from models.kiss3dgen.train import LoraTrainConfig, build_dataset, read_dataset, train_lora

#: Folder under ``out_dir`` holding the rendered training bundles.
DATASET_FOLDER = "dataset"


@task(name="render-training-bundles", cache_policy=NONE)
def render_dataset(library_path: str, dataset_dir: str, tile: int) -> int:
    """Render the library's meshes into ``dataset_dir`` (existing renders reused); returns the
    number of samples."""
    logger = get_run_logger()
    samples = build_dataset(library_path, dataset_dir, tile=tile)
    logger.info("dataset: %d bundles at tile %d in %s", len(samples), tile, dataset_dir)
    return len(samples)


@task(name="train-lora", cache_policy=NONE)
def train(
    dataset_dir: str,
    flux_path: str,
    out_dir: str,
    config: dict,
    resume: bool,
    flux_base_path: str | None = None,
) -> dict:
    """Train on the rendered dataset; returns the LoRA path and the loss figures."""
    logger = get_run_logger()
    cfg = LoraTrainConfig(**config)
    every = max(1, cfg.steps // 20)

    def progress(step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            logger.info("step %d/%d loss %.5f", step, total, loss)

    result = train_lora(
        read_dataset(dataset_dir),
        flux_path,
        out_dir,
        cfg,
        resume=resume,
        progress=progress,
        flux_base_path=flux_base_path,
    )
    return {
        "lora_path": str(result.lora_path),
        "steps": result.steps,
        "final_loss": result.losses[-1] if result.losses else None,
        "eval_loss_start": result.eval_loss_start,
        "eval_loss_end": result.eval_loss_end,
    }


@flow(name="train-lora")
def train_lora_flow(
    library_path: str,
    out_dir: str,
    flux_path: str,
    rank: int = 16,
    steps: int = 1000,
    lr: float = 1e-4,
    resume: bool = False,
    tile: int = 512,
    config: dict | None = None,
    flux_base_path: str | None = None,
) -> dict:
    """Render ``library_path`` and train a LoRA on Flux at ``flux_path`` into ``out_dir``.

    ``config``: further :class:`models.kiss3dgen.train.LoraTrainConfig` fields (alpha,
    batch_size, checkpoint_every, ...); ``rank``, ``steps``, ``lr`` and ``tile`` win over it.
    Returns ``{"lora_path", "steps", "final_loss", "eval_loss_start", "eval_loss_end"}``.
    """
    known = {f.name for f in fields(LoraTrainConfig)}
    unknown = sorted(set(config or {}) - known)
    if unknown:
        raise ValueError(f"unknown LoRA training options {unknown}; known: {sorted(known)}")
    cfg = LoraTrainConfig(**{**(config or {}), "rank": rank, "steps": steps, "lr": lr,
                             "tile": tile})
    dataset_dir = str(Path(out_dir) / DATASET_FOLDER)
    render_dataset(library_path, dataset_dir, cfg.tile)
    return train(dataset_dir, flux_path, out_dir, asdict(cfg), resume, flux_base_path)


if __name__ == "__main__":
    train_lora_flow(
        library_path="foundry-data/library",
        out_dir="foundry-data/lora",
        flux_path="weights/FLUX.1-dev",
        rank=16,
        steps=1000,
    )
