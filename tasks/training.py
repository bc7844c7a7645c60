"""Tasks of the ``train-lora`` flow: render the library into bundles, train a Flux LoRA on them."""

from __future__ import annotations

from dataclasses import asdict, fields

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from models.generate.kiss3dgen.train import (
    LoraTrainConfig,
    build_dataset,
    read_dataset,
    train_lora,
)


def lora_config(config: dict | None, **overrides) -> dict:
    """The full training configuration as plain values: ``config`` (further
    :class:`~models.generate.kiss3dgen.train.LoraTrainConfig` fields) under ``overrides``.

    Raises ValueError naming unknown options."""
    known = {f.name for f in fields(LoraTrainConfig)}
    unknown = sorted(set(config or {}) - known)
    if unknown:
        raise ValueError(f"unknown LoRA training options {unknown}; known: {sorted(known)}")
    return asdict(LoraTrainConfig(**{**(config or {}), **overrides}))


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
