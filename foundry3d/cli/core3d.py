"""CLI commands of the 3D core: ``foundry3d render-bundle`` (and, later, ``reconstruct``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from foundry3d.cli.app import UserError, app, console

# -- render-bundle -----------------------------------------------------------------------------


@app.command("render-bundle")
def render_bundle_command(
    mesh: Annotated[Path, typer.Argument(help="Mesh file: OBJ, GLB/GLTF, STL, PLY, OFF ...")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle PNG to write (sidecar beside).")],
    tile: Annotated[int, typer.Option(help="Pixels per tile side (bundle is 4T x 2T).")] = 512,
    up: Annotated[str, typer.Option(help="Up axis of the source mesh: y or z.")] = "y",
    supersample: Annotated[int, typer.Option(help="Anti-aliasing samples per pixel side.")] = 2,
) -> None:
    """Render MESH into a 3D bundle image (4 colour views over 4 normal maps) and its sidecar.

    The mesh is normalised as BUNDLE_SPEC.md says (bounding box centred, longest side 1.8);
    the sidecar records the scale and offset that map the bundle back to the source.
    """
    import time

    from foundry3d.settings import get_settings
    from models.mesh import MeshLoadError, load_mesh
    from models.raster import RasteriserUnavailable, get_rasteriser
    from models.render import render_bundle

    if up not in ("y", "z"):
        raise UserError(f"--up must be y or z, got {up!r}")
    if tile < 8 or tile % 2:
        raise UserError(f"--tile must be an even number >= 8, got {tile}")
    if supersample < 1:
        raise UserError(f"--supersample must be >= 1, got {supersample}")
    if not mesh.exists():
        raise UserError(f"mesh file {mesh} does not exist")
    if out.suffix.lower() != ".png":
        raise UserError(f"the bundle is a PNG: -o must end in .png, got {out}")
    try:
        rasteriser = get_rasteriser(get_settings().rasteriser)
    except RasteriserUnavailable as exc:
        raise UserError(str(exc)) from exc
    try:
        source = load_mesh(mesh)
    except MeshLoadError as exc:
        raise UserError(str(exc)) from exc
    start = time.perf_counter()
    bundle = render_bundle(source, tile=tile, up=up, supersample=supersample, rasteriser=rasteriser)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = bundle.save(out)
    console.print(
        f"wrote {path} and {path.with_suffix('.json').name}: {len(source.faces)} faces, "
        f"tile {tile}, scale {bundle.spec.scale:.6g}, {rasteriser.name} rasteriser, "
        f"{time.perf_counter() - start:.2f} s"
    )


# -- reconstruct -------------------------------------------------------------------------------
# (the `reconstruct` command is added here by the reconstruction work)
