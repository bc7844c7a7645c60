"""CLI command ``foundry3d validate MANIFEST``: which rows become requests, which are rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from foundry3d.cli.app import app, console


@app.command()
def validate(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (.yaml, .jsonl or .csv).")],
    fetch: Annotated[
        bool,
        typer.Option(
            "--fetch/--no-fetch",
            help="Download s3:// and allowed https:// images to check and hash them.",
        ),
    ] = False,
    show_valid: Annotated[
        bool, typer.Option("--show-valid/--hide-valid", help="List the valid requests too.")
    ] = True,
) -> None:
    """Check a manifest without running anything; exit code 1 if any row is rejected.

    Image folders and URL rules come from FOUNDRY_IMAGE_ROOTS, FOUNDRY_ALLOW_URL_FETCH,
    FOUNDRY_URL_HOSTS and FOUNDRY_MAX_IMAGE_PIXELS.
    """
    from foundry3d.settings import get_settings
    from intake.parse import parse_manifest
    from intake.references import default_fetcher

    settings = get_settings()
    parsed = parse_manifest(
        manifest,
        image_roots=settings.image_roots,
        allow_urls=settings.allow_url_fetch,
        url_hosts=settings.url_hosts,
        max_image_pixels=settings.max_image_pixels,
        fetch=fetch,
        # s3:// images are read with the configured store's endpoint, as the catalog does
        fetcher=default_fetcher(settings.url_hosts, store_url=settings.resolved_store_url),
    )

    if show_valid and parsed.requests:
        table = Table(title=f"valid requests in {escape(str(manifest))}")
        for column in ("line", "id", "kind", "generator", "init", "seed", "var"):
            table.add_column(column, no_wrap=column != "id", overflow="fold")
        table.add_column("source", overflow="fold")
        folder = manifest.resolve().parent
        for r in parsed.requests:
            source = r.prompt or _shown_ref(r.image_ref or r.bundle_ref or "", folder)
            source = source if len(source) <= 60 else source[:57] + "..."
            table.add_row(
                str(r.line), escape(r.item_id or ""), r.kind, r.generator, r.init,
                str(r.seed), str(r.variant), escape(source),
            )
        console.print(table)

    if parsed.rejected:
        table = Table(title=f"rejected rows in {escape(str(manifest))}", title_style="bold red")
        table.add_column("where", overflow="fold")
        table.add_column("reason", overflow="fold")
        for rejection in parsed.rejected:
            table.add_row(f"{escape(rejection.file)}:{rejection.line}", escape(rejection.reason))
        console.print(table)

    rows_ok = len({r.line for r in parsed.requests})
    colour = "red" if parsed.rejected else "green"
    console.print(
        f"[{colour}]{escape(str(manifest))}: {rows_ok} valid row(s) -> "
        f"{len(parsed.requests)} request(s), {len(parsed.rejected)} rejected[/]"
    )
    if parsed.rejected:
        raise typer.Exit(code=1)


def _shown_ref(ref: str, folder: Path) -> str:
    """A local path relative to the manifest's folder when it is inside it, else as is."""
    path = Path(ref)
    if "://" not in ref and path.is_relative_to(folder):
        return str(path.relative_to(folder))
    return ref
