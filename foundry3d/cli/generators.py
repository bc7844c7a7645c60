"""CLI commands of the generators: ``foundry3d train-lora`` (Kiss3DGen LoRA fine-tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from foundry3d.cli.app import UserError, app, console


@app.command("train-lora")
def train_lora_command(
    library: Annotated[Path, typer.Argument(help="Captioned mesh library folder (library.jsonl).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: LoRA, checkpoints, dataset.")],
    rank: Annotated[int, typer.Option(help="LoRA rank of every adapted projection.")] = 16,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha (default: the rank).")] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 1000,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Bundles per step.")] = 1,
    tile: Annotated[int, typer.Option(help="Tile size of the training bundles.")] = 512,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 250,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")]
    = False,
    flux_path: Annotated[
        Path | None,
        typer.Option(help="Base Flux weights (diffusers folder or .safetensors); default "
                     "FOUNDRY_FLUX_PATH."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of init, batch order and noise.")] = 0,
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in backward (saves GPU memory).")
    ] = False,
) -> None:
    """Train a Kiss3DGen LoRA on bundles rendered from a captioned mesh library.

    Writes OUT/kiss3dgen_lora.safetensors, loadable as the kiss3dgen generator's lora_path.
    The `train-lora` Prefect flow (flows/train_lora.py) runs the same two steps as a flow.
    """
    from foundry3d.settings import get_settings
    from models.generate.kiss3dgen.pipeline import WeightsMissingError
    from models.generate.kiss3dgen.train import LoraTrainConfig, build_dataset, train_lora
    from models.library.format import LibraryError

    flux = flux_path or get_settings().flux_path
    if flux is None:
        raise UserError("no Flux weights: pass --flux-path or set FOUNDRY_FLUX_PATH")
    try:
        config = LoraTrainConfig(
            rank=rank, alpha=alpha, steps=steps, lr=lr, batch_size=batch_size, tile=tile,
            checkpoint_every=checkpoint_every, seed=seed,
            gradient_checkpointing=gradient_checkpointing,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc

    columns = (
        TextColumn("[bold]{task.fields[stage]}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        render_task = bar.add_task("", total=None, stage="rendering", info="")
        train_task = bar.add_task("", total=steps, stage="training", info="", start=False)

        def on_render(done: int, total: int) -> None:
            bar.update(render_task, completed=done, total=total)

        def on_step(step: int, total: int, loss: float) -> None:
            bar.update(train_task, completed=step, total=total, info=f"loss {loss:.4f}")

        try:
            samples = build_dataset(library, out / "dataset", tile=tile, progress=on_render)
            bar.start_task(train_task)
            result = train_lora(samples, flux, out, config, resume=resume, progress=on_step)
        except (WeightsMissingError, LibraryError, FileNotFoundError, ImportError) as exc:
            raise UserError(str(exc)) from exc
    console.print(
        f"[green]trained[/] LoRA rank {rank} for {result.steps} steps on {len(samples)} bundles: "
        f"fixed-batch loss {result.eval_loss_start:.4f} -> {result.eval_loss_end:.4f}; "
        f"saved {result.lora_path}"
    )
