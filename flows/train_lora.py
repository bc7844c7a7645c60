"""The ``train-lora`` flow: render a captioned mesh library into bundles, train a Flux LoRA.

Kiss3DGen's recipe (see :mod:`models.generate.kiss3dgen.train`): every library mesh becomes a
3D bundle image with its caption in the generator's prompt format, and a LoRA on the Flux
transformer's attention projections learns the flow-matching objective. The output folder gets
``kiss3dgen_lora.safetensors`` (loadable as the generator's ``lora_path``), resumable
checkpoints and ``train_config.json``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.training import DATASET_FOLDER, lora_config, render_dataset, train


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

    ``config``: further :class:`models.generate.kiss3dgen.train.LoraTrainConfig` fields (alpha,
    batch_size, checkpoint_every, ...); ``rank``, ``steps``, ``lr`` and ``tile`` win over it.
    Returns ``{"lora_path", "steps", "final_loss", "eval_loss_start", "eval_loss_end"}``.
    """
    cfg = lora_config(config, rank=rank, steps=steps, lr=lr, tile=tile)
    dataset_dir = str(Path(out_dir) / DATASET_FOLDER)
    render_dataset(library_path, dataset_dir, cfg["tile"])
    return train(dataset_dir, flux_path, out_dir, cfg, resume, flux_base_path)


if __name__ == "__main__":
    train_lora_flow(
        library_path="foundry-data/library",
        out_dir="foundry-data/lora",
        flux_path="weights/FLUX.1-dev",
        rank=16,
        steps=1000,
    )
