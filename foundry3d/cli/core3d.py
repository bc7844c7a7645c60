"""CLI commands of the 3D core: ``foundry3d render-bundle`` and ``foundry3d reconstruct``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from foundry3d.cli.app import UserError, app, console
from foundry3d.cli.startup import imports_without_collection

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

    with imports_without_collection():
        from foundry3d.settings import get_settings
        from models.geometry.mesh import MeshLoadError, load_mesh
        from models.raster import RasteriserUnavailable, get_rasteriser
        from models.render.views import render_bundle

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

#: Parts of the refine step (keys of :attr:`Reconstruction.timings`) the report splits it into;
#: ``refine_remesh`` is part of the coarse and fine phases.
REFINE_PARTS = ("refine_setup", "refine_coarse", "refine_fine", "refine_remesh", "refine_explicit",
                "refine_clean", "hull_prior", "guard")


@app.command("reconstruct")
def reconstruct_command(
    bundle_path: Annotated[Path, typer.Argument(help="Bundle PNG (sidecar beside it, if any).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="GLB to write.")],
    init: Annotated[
        str,
        typer.Option(help="'hull' (visual hull of the masks), 'sphere', 'library', 'lrm', or a "
                          "mesh file in the bundle's source frame."),
    ] = "hull",
    init_up: Annotated[str, typer.Option(help="Up axis of an --init mesh: y or z.")] = "y",
    preview: Annotated[Path | None, typer.Option(help="Also write a preview sheet PNG.")] = None,
    reference: Annotated[
        Path | None, typer.Option(help="Ground-truth mesh (source frame) for Chamfer/F-score.")
    ] = None,
    reference_up: Annotated[str, typer.Option(help="Up axis of --reference: y or z.")] = "y",
    coarse_steps: Annotated[int | None, typer.Option(help="Coarse-phase steps.")] = None,
    fine_steps: Annotated[int | None, typer.Option(help="Fine-phase steps.")] = None,
    texture: Annotated[bool, typer.Option(help="Project the colour views onto the mesh.")] = True,
    texture_mode: Annotated[
        str, typer.Option(help="'texture': UV atlas with baked colour and normal maps; 'vertex': "
                          "vertex colours.")
    ] = "texture",
    faces: Annotated[int, typer.Option(help="Face budget of the GLB (LOD 0).")] = 20000,
    formats: Annotated[
        str, typer.Option(help="Files besides the GLBs, comma-separated: obj, usdz.")
    ] = "",
) -> None:
    """Reconstruct a game-ready asset from a bundle image: an initial mesh (the visual hull of
    its masks by default), ISOMER-style refinement against its normal maps and masks, then the
    export stage's deliverables (models.reconstruct.pipeline, models.export.asset).

    OUT gets LOD 0: a UV atlas with the colour views baked in and a normal map (or vertex
    colours with --texture-mode vertex), decimated to --faces; beside it OUT's stem names the
    other files (_lod1.glb, _thumbnail.png, _turntable.webp, .usdz, _obj.zip). The GLBs are in
    metres with the pivot at the bottom centre (+Y up, front +Z), at the source's size when the
    sidecar records it. With --no-texture a plain GLB in the bundle frame is written. Ends with
    a report of the metrics and timings.
    """
    import time

    with imports_without_collection():
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        from foundry3d.settings import get_settings
        from models.bundle.spec import Bundle, BundleError
        from models.evaluate.asset import evaluate_asset
        from models.evaluate.metrics import chamfer_fscore
        from models.export.params import ExportParams, ExportParamsError
        from models.geometry.frames import to_bundle_frame
        from models.geometry.glb import export_glb
        from models.geometry.mesh import MeshLoadError, load_mesh
        from models.raster import RasteriserUnavailable, get_rasteriser
        from models.reconstruct.hull import HullParamsError
        from models.reconstruct.init import INITIALISERS, InitContext, InitInputError
        from models.reconstruct.pipeline import reconstruct_bundle, schedule_for
        from models.render.preview import preview_sheet

    start = time.perf_counter()
    if not bundle_path.exists():
        raise UserError(f"bundle {bundle_path} does not exist")
    if out.suffix.lower() != ".glb":
        raise UserError(f"-o must end in .glb, got {out}")
    for flag, value in (("--init-up", init_up), ("--reference-up", reference_up)):
        if value not in ("y", "z"):
            raise UserError(f"{flag} must be y or z, got {value!r}")
    try:
        bundle = Bundle.load(bundle_path)
    except (BundleError, OSError) as exc:
        raise UserError(f"cannot read bundle {bundle_path}: {exc}") from exc
    settings = get_settings()
    try:
        rasteriser = get_rasteriser(settings.rasteriser)
    except RasteriserUnavailable as exc:
        raise UserError(str(exc)) from exc

    def into_bundle_frame(path: Path, up: str):
        try:
            return to_bundle_frame(load_mesh(path), bundle.spec, up)
        except MeshLoadError as exc:
            raise UserError(str(exc)) from exc

    try:
        export_params = ExportParams.from_mapping({
            "texture_mode": texture_mode,
            "faces": faces,
            "formats": [f.strip() for f in formats.split(",") if f.strip()] or ["glb"],
        })
    except ExportParamsError as exc:
        raise UserError(str(exc)) from exc
    if init in INITIALISERS:
        start_mesh = init
    elif Path(init).exists():
        start_mesh = into_bundle_frame(Path(init), init_up)
    else:
        raise UserError(
            f"--init must be one of {', '.join(INITIALISERS)} or an existing mesh file, "
            f"got {init!r}"
        )
    steps = {"coarse_steps": coarse_steps, "fine_steps": fine_steps}
    params = schedule_for(init if isinstance(start_mesh, str) else "mesh",
                          {k: v for k, v in steps.items() if v is not None})
    context = InitContext(
        library_path=settings.resolved_library_path,
        lrm_path=str(settings.lrm_path) if settings.lrm_path else None,
    )
    with Progress(
        TextColumn("[bold]refine"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), console=console,
    ) as bar:
        task = bar.add_task("refine", total=None, losses="")

        def report(step: int, total: int, losses: dict) -> None:
            text = " ".join(f"{k} {losses[k]:.3g}" for k in ("normal", "mask") if k in losses)
            bar.update(task, completed=step, total=total, losses=text)

        try:
            result = reconstruct_bundle(bundle, start_mesh, params, context=context,
                                        texture=texture, rasteriser=rasteriser, progress=report)
        except (InitInputError, HullParamsError) as exc:
            raise UserError(str(exc)) from exc
    mesh = result.coloured if result.coloured is not None else result.mesh
    out.parent.mkdir(parents=True, exist_ok=True)
    mark = time.perf_counter()
    export_parts: dict[str, float] = {}
    if texture:
        written_files, export_parts = _export_deliverables(
            result.mesh, bundle, out, export_params, bundle_path.name, rasteriser
        )
    else:
        export_glb(mesh, out)
        written_files = [out]
    if preview is not None:
        preview_sheet(mesh, preview, rasteriser=rasteriser)
    export_seconds = time.perf_counter() - mark
    mark = time.perf_counter()
    metrics = evaluate_asset(bundle, mesh)
    metrics.update(result.metrics)
    if reference is not None:
        scores = chamfer_fscore(mesh, into_bundle_frame(reference, reference_up))
        metrics.update({k: scores[k] for k in ("chamfer", "fscore@0.05", "fscore@0.1")})
    metrics.update({f"{k}_seconds": v for k, v in result.timings.items() if k != "total"})
    metrics.update(export_seconds=export_seconds, report_seconds=time.perf_counter() - mark)
    table = Table(title=f"reconstruction of {bundle_path.name} (kept: {result.kept})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("mask_iou", "normal_angle_deg", "colour_psnr", "colour_ssim", "chamfer",
                "fscore@0.05", "fscore@0.1", "unseen_area_fraction", "mesh_faces",
                "mesh_vertices", "mesh_components", "mesh_watertight", "mesh_non_manifold_edges",
                "init_seconds", "refine_seconds", "texture_seconds", "metrics_seconds",
                "export_seconds", "report_seconds"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4g}")
    console.print(table)
    refine_parts = {k[len("refine_"):] if k.startswith("refine_") else k: v
                    for k, v in result.timings.items() if k in REFINE_PARTS}
    for stage, parts in (("refine", refine_parts), ("export", export_parts)):
        if parts:
            # Where the stage's seconds go (wall), largest first.
            ranked = sorted(parts.items(), key=lambda item: -item[1])
            console.print(f"{stage}: " + ", ".join(f"{k} {v:.2f} s" for k, v in ranked))
    shown = [*written_files, *([preview] if preview else [])]
    written = "wrote " + ", ".join(str(path) for path in shown)
    console.print(f"{written} ({time.perf_counter() - start:.1f} s in all)")


def _export_deliverables(
    mesh, bundle, out: Path, params, source: str, rasteriser
) -> tuple[list[Path], dict[str, float]]:
    """The export stage's deliverables for ``mesh`` (bundle frame), named after ``out``:
    ``out`` is LOD 0, the other files get its stem as a prefix (``chair_lod1.glb``,
    ``chair_thumbnail.png``, ...). Returns the files written and the export's wall seconds
    per step (:attr:`models.export.asset.ExportResult.timings`)."""
    import shutil

    from models.export.asset import export_asset
    from tasks.scratch import scratch_folder

    with scratch_folder("export") as scratch:
        result = export_asset(
            mesh, bundle, scratch, params, provenance={"bundle": source,
                                                       "generator": "foundry3d reconstruct"},
            rasteriser=rasteriser,
        )
        written = []
        for name, path in sorted(result.files.items()):
            # asset.glb -> chair.glb, asset_lod1.glb -> chair_lod1.glb, asset.usdz -> chair.usdz
            suffix = name[len("asset"):] if name.startswith("asset") else f"_{name}"
            target = out.with_name(out.stem + suffix)
            shutil.move(str(path), target)
            written.append(target)
    return written, dict(result.timings)
