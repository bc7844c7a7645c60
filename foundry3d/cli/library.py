"""CLI commands of the captioned mesh library: ``foundry3d library build|sample|list|query``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from foundry3d.cli.app import UserError, app, console

library_app = typer.Typer(
    name="library",
    help="The captioned mesh library the `library` generator retrieves from.",
    no_args_is_help=True,
)
app.add_typer(library_app, name="library")


def _default_folder() -> Path:
    from foundry3d.settings import get_settings

    return get_settings().resolved_library_path


def _index_folder(folder: Path, *, render: bool, tile: int) -> None:
    """Build the index of ``folder`` with a progress bar, then print a one-line summary."""
    from models.embed.text import EmbedderUnavailable, get_text_embedder
    from models.library.format import LibraryError
    from models.library.index import build_library_index

    try:
        embedder = get_text_embedder()
    except EmbedderUnavailable as exc:
        raise UserError(str(exc)) from exc
    columns = (
        TextColumn("[bold]indexing[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("", total=None)

        def progress(done: int, total: int, entry_id: str, action: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{entry_id} ({action})")

        try:
            index = build_library_index(
                folder, embedder=embedder, render=render, tile=tile, progress=progress
            )
        except LibraryError as exc:
            raise UserError(str(exc)) from exc
    r = index.report
    console.print(
        f"[green]indexed[/] {r.total} meshes in {folder}: {r.embedded} captions embedded, "
        f"{r.rendered} meshes rendered, {r.unchanged} unchanged; {r.seconds:.1f} s "
        f"-> {folder / 'index.npz'}"
    )


@library_app.command("build")
def build(
    source: Annotated[
        str | None,
        typer.Argument(
            help="Library folder holding library.jsonl, or a bucket prefix "
            "s3://bucket/prefix?endpoint_url=... (synced to a local cache first); "
            "default the configured folder."
        ),
    ] = None,
    render: Annotated[
        bool, typer.Option(help="Render each mesh to describe its views (image queries).")
    ] = True,
    tile: Annotated[int, typer.Option(help="Tile size of the renders that are described.")] = 256,
) -> None:
    """Index a library: embed captions and describe rendered views (unchanged entries reused)."""
    if source is not None and source.startswith("s3://"):
        folder = _sync_bucket_library(source)
    else:
        folder = Path(source) if source else _default_folder()
    if not folder.is_dir():
        raise UserError(f"library folder {folder} does not exist")
    if tile < 64:
        raise UserError(f"--tile must be at least 64, got {tile}")
    _index_folder(folder, render=render, tile=tile)


def _sync_bucket_library(url: str) -> Path:
    """Mirror a bucket-hosted library into ``<data_dir>/library-cache/<bucket>/<prefix>``."""
    from urllib.parse import urlsplit

    from foundry3d.settings import get_settings
    from storage.objects import StoreError, open_store, sync_to_folder

    parts = urlsplit(url)
    folder = get_settings().data_dir / "library-cache" / parts.netloc / parts.path.strip("/")
    try:
        downloaded, unchanged = sync_to_folder(open_store(url), folder)
    except StoreError as exc:
        raise UserError(f"cannot read the library at {url.split('?')[0]}: {exc}") from exc
    if downloaded + unchanged == 0:
        raise UserError(f"no objects under {url.split('?')[0]}")
    console.print(
        f"synced {url.split('?')[0]} to {folder}: {downloaded} downloaded, {unchanged} unchanged "
        f"(set FOUNDRY_LIBRARY_PATH={folder} to generate from it)"
    )
    return folder


@library_app.command("sample")
def sample(
    out: Annotated[
        Path | None,
        typer.Option(help="Library folder to write; default FOUNDRY_LIBRARY_PATH or "
                     "<data_dir>/library."),
    ] = None,
    index: Annotated[bool, typer.Option(help="Index the library after writing it.")] = True,
    tile: Annotated[int, typer.Option(help="Tile size of the renders that are described.")] = 256,
) -> None:
    """Build the default sample library: 78 scanned YCB objects with hand-written captions."""
    from foundry3d.sample_library import write_sample_library
    from models.library.format import LibraryError

    folder = out or _default_folder()
    started = time.perf_counter()
    try:
        report = write_sample_library(folder)
    except LibraryError as exc:
        raise UserError(str(exc)) from exc
    console.print(
        f"sample library at {folder}: {report.entries} YCB meshes ({report.copied} copied), "
        f"{report.user_entries} of your own kept; library.jsonl "
        f"{'written' if report.jsonl_changed else 'unchanged'}"
    )
    if index:
        _index_folder(folder, render=True, tile=tile)
    console.print(f"done in {time.perf_counter() - started:.1f} s")


@library_app.command("list")
def list_entries(
    folder: Annotated[
        Path | None, typer.Argument(help="Library folder; default the configured one.")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only entries with this tag.")] = None,
) -> None:
    """List the library's entries: id, caption, tags, up axis, licence."""
    from models.library.format import LIBRARY_FILE, LibraryError, read_library_jsonl
    from models.library.index import INDEX_META

    folder = folder or _default_folder()
    try:
        entries = read_library_jsonl(folder / LIBRARY_FILE)
    except LibraryError as exc:
        raise UserError(
            f"{exc}\n(build the sample library with `foundry3d library sample`)"
        ) from exc
    if tag:
        entries = [e for e in entries if tag in e.tags]
    table = Table(title=f"library {folder}")
    for column in ("id", "caption", "tags", "up", "licence"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(e.id, e.caption, ", ".join(e.tags), e.up, e.licence)
    console.print(table)
    indexed = "indexed" if (folder / INDEX_META).is_file() else "not indexed"
    console.print(f"{len(entries)} entries ({indexed})")


@library_app.command("query")
def query(
    prompt: Annotated[str | None, typer.Argument(help="Text to match against captions.")] = None,
    image: Annotated[
        Path | None, typer.Option(help="Image of one object on white to match against views.")
    ] = None,
    folder: Annotated[Path | None, typer.Option(help="Library folder.")] = None,
    limit: Annotated[int, typer.Option(help="How many matches to show.")] = 5,
) -> None:
    """Show the library entries nearest to a text prompt or an image, with similarities."""
    import numpy as np
    from PIL import Image

    from models.embed.image import DescriptorError, image_descriptor
    from models.embed.text import get_text_embedder
    from models.library.format import LibraryError
    from models.library.index import LibraryIndex

    if (prompt is None) == (image is None):
        raise UserError("give either a PROMPT or --image")
    folder = folder or _default_folder()
    try:
        index = LibraryIndex.load(folder)
        if prompt is not None:
            matches = index.query_text(get_text_embedder().embed_text(prompt), k=limit)
        else:
            if not image.is_file():
                raise UserError(f"image {image} does not exist")
            with Image.open(image) as img:
                pixels = np.asarray(img.convert("RGBA" if "A" in img.getbands() else "RGB"))
            matches = index.query_image(image_descriptor(pixels), k=limit)
    except (LibraryError, DescriptorError) as exc:
        raise UserError(str(exc)) from exc
    table = Table(title=f"nearest to {prompt!r}" if prompt else f"nearest to {image.name}")
    for column in ("similarity", "id", "caption", "view"):
        table.add_column(column, overflow="fold")
    for m in matches:
        view = "" if m.view is None else str(m.view)
        table.add_row(f"{m.similarity:.3f}", m.entry.id, m.entry.caption, view)
    console.print(table)
