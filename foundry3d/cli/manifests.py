"""CLI command ``foundry3d validate MANIFEST``: which rows become requests, which are rejected.

The report streams: each rejection is printed as soon as its row is judged (``file:line:
reason``), valid rows only with ``--show-valid`` (one plain line per request), then one summary
line. Nothing is collected, so a JSONL manifest of a million rows is checked in bounded memory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer

from foundry3d.cli.app import app


@app.command()
def validate(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (.yaml, .jsonl or .csv).")],
    fetch: Annotated[
        bool,
        typer.Option(
            "--fetch/--no-fetch",
            help="Download s3:// and allowed https:// images and meshes to check and hash them.",
        ),
    ] = False,
    show_valid: Annotated[
        bool,
        typer.Option("--show-valid/--hide-valid", help="List the valid requests too, one a line."),
    ] = False,
) -> None:
    """Check a manifest without running anything; exit code 1 if any row is rejected.

    Image and mesh folders and URL rules come from FOUNDRY_IMAGE_ROOTS, FOUNDRY_ALLOW_URL_FETCH,
    FOUNDRY_URL_HOSTS and FOUNDRY_MAX_IMAGE_PIXELS. JSONL manifests of any size up to
    4 GiB are read row by row; a run reads at most 16 MiB at once.
    """
    from foundry3d.settings import get_settings
    from intake.limits import MAX_MANIFEST_BYTES, MAX_STREAMED_MANIFEST_BYTES
    from intake.parse import ManifestRows
    from intake.references import default_fetcher
    from intake.requests import Rejection

    settings = get_settings()
    rows = ManifestRows(
        manifest,
        image_roots=settings.image_roots,
        allow_urls=settings.allow_url_fetch,
        url_hosts=settings.url_hosts,
        max_image_pixels=settings.max_image_pixels,
        fetch=fetch,
        # s3:// inputs are read with the configured store's endpoint, as the catalog does
        fetcher=default_fetcher(settings.url_hosts, store_url=settings.resolved_store_url),
        max_stream_bytes=MAX_STREAMED_MANIFEST_BYTES,
    )
    out = sys.stdout
    folder = manifest.resolve().parent
    rows_ok = requests = rejected = 0
    for outcome in rows:
        if isinstance(outcome, Rejection):
            rejected += 1
            out.write(f"{outcome}\n")
            continue
        rows_ok += 1
        requests += len(outcome.requests)
        if show_valid:
            _write_valid(out, str(manifest), outcome.requests, folder)
    out.write(
        f"{manifest}: {rows_ok} valid row(s) -> {requests} request(s), {rejected} rejected\n"
    )
    if rows.format == "jsonl" and _size(manifest) > MAX_MANIFEST_BYTES:
        out.write(
            f"{manifest}: note: {_size(manifest)} bytes; `foundry3d run` reads manifests of at "
            f"most {MAX_MANIFEST_BYTES} bytes, split it to run it\n"
        )
    out.flush()
    if rejected:
        raise typer.Exit(code=1)


def _write_valid(out: TextIO, file: str, requests: list, folder: Path) -> None:
    """One line per request: where, what kind, which backends, seed, variant, id, source."""
    for r in requests:
        source = r.prompt or _shown_ref(r.image_ref or r.bundle_ref or r.mesh_ref or "", folder)
        if r.mesh_ref is not None:
            source = f"{_shown_ref(r.mesh_ref, folder)}: {r.prompt}"
        source = " ".join(source.split())
        source = source if len(source) <= 80 else source[:77] + "..."
        item = f" id={r.item_id}" if r.item_id else ""
        out.write(
            f"{file}:{r.line}: ok {r.kind} generator={r.generator} init={r.init} seed={r.seed} "
            f"variant={r.variant}{item} {source}\n"
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _shown_ref(ref: str, folder: Path) -> str:
    """A local path relative to the manifest's folder when it is inside it, else as is."""
    path = Path(ref)
    if "://" not in ref and path.is_relative_to(folder):
        return str(path.relative_to(folder))
    return ref
