"""Top-1 accuracy of matching a reference picture to the mesh library (the ``library``
generator's image path, and the coarse bundle of ``kiss3dgen-image``).

The labelled set: each library mesh rendered from azimuths the index never saw (``--azimuths``,
default 20, 110, 200, 290 degrees, elevation 12) and composited, anti-aliased, onto new
backgrounds: white, a random flat colour, mid grey with mild noise (sigma 3 levels), and a
random flat colour with strong grain (sigma 8). Each picture is matched against
the index (silhouette and colour descriptors of the 4 library renders per mesh) two ways:

- ``raw``: the picture as it is (the descriptor's own plain-background guess);
- ``segmented``: the object cut out first by :func:`models.generate.background.remove_background`
  (what the generators now do).

It prints top-1 accuracy per background and method, and the mean IoU of the segmentation
against the true coverage mask.

    python benchmarks/library_image_match.py                     # 20 YCB objects of the sample
    python benchmarks/library_image_match.py --limit 0           # all 78
    python benchmarks/library_image_match.py --library PATH      # an indexed library of yours
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BACKGROUNDS = ("white", "flat colour", "noisy grey", "grainy colour")


def composite(colour: np.ndarray, coverage: np.ndarray, background: str,
              rng: np.random.Generator) -> np.ndarray:
    """``(T, T, 3)`` uint8: the render over ``background`` (alpha = coverage)."""
    t = colour.shape[0]
    if background == "white":
        bg = np.full((t, t, 3), 255.0)
    elif background == "flat colour":
        bg = np.ones((t, t, 3)) * rng.integers(0, 256, 3)
    elif background == "noisy grey":
        bg = np.full((t, t, 3), 128.0) + rng.normal(0.0, 3.0, (t, t, 3))
    else:  # a flat colour under strong sensor grain
        bg = np.ones((t, t, 3)) * rng.integers(0, 256, 3) + rng.normal(0.0, 8.0, (t, t, 3))
    a = coverage[..., None]
    return np.clip(np.round(colour * a + bg * (1 - a)), 0, 255).astype(np.uint8)


def sample_library(folder: Path, limit: int) -> Path:
    """The YCB sample library (``limit`` entries, 0 = all) written into ``folder``."""
    from foundry3d.sample_library import write_sample_library
    from models.library.format import LIBRARY_FILE

    write_sample_library(folder)
    if limit:
        lines = (folder / LIBRARY_FILE).read_text().splitlines()[:limit]
        (folder / LIBRARY_FILE).write_text("\n".join(lines) + "\n")
    return folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--library", type=Path, help="an indexed library folder (default: YCB sample)")
    p.add_argument("--limit", type=int, default=20, help="sample library entries (0 = all 78)")
    p.add_argument("--azimuths", default="20,110,200,290", help="query azimuths, degrees")
    p.add_argument("--elevation", type=float, default=12.0, help="query elevation, degrees")
    p.add_argument("--tile", type=int, default=192, help="query picture side, pixels")
    p.add_argument("--seed", type=int, default=0, help="background colours and noise")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from models.bundle.spec import BundleSpec
    from models.embed.image import image_descriptor
    from models.embed.text import get_text_embedder
    from models.generate.background import BackgroundError, remove_background
    from models.geometry.mesh import load_mesh, normalise_mesh
    from models.library.index import LibraryIndex, build_library_index
    from models.render.views import orbit_cameras, render_views

    args = parse_args(argv)
    azimuths = [float(a) for a in args.azimuths.split(",") if a.strip()]
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.library or sample_library(Path(tmp) / "library", args.limit)
        try:
            index = LibraryIndex.load(folder)
        except Exception:  # not indexed yet
            index = build_library_index(folder, embedder=get_text_embedder())
        print(f"library: {len(index)} entries ({folder}); index built/loaded in "
              f"{time.perf_counter() - start:.1f} s", flush=True)

        hits = {(b, m): 0 for b in BACKGROUNDS for m in ("raw", "segmented")}
        ious = {b: [] for b in BACKGROUNDS}
        failures = {b: 0 for b in BACKGROUNDS}
        total = 0
        spec = BundleSpec(tile=args.tile)
        cams = orbit_cameras(azimuths, [args.elevation] * len(azimuths), spec)
        for entry in index.entries:
            mesh, _, _ = normalise_mesh(load_mesh(index.mesh_path(entry)), up=entry.up)
            views = render_views(mesh, cams, supersample=2)
            colours, coverage = views.colour, views.coverage
            for v in range(len(azimuths)):
                total += 1
                truth = coverage[v] > 0.5
                for background in BACKGROUNDS:
                    picture = composite(colours[v], coverage[v], background, rng)
                    try:
                        raw = index.query_image(image_descriptor(picture))[0].entry.id
                    except ValueError:
                        raw = None
                    hits[(background, "raw")] += raw == entry.id
                    try:
                        seg = remove_background(picture)
                    except BackgroundError:
                        failures[background] += 1
                        continue
                    mask = seg.mask
                    ious[background].append((mask & truth).sum() / max((mask | truth).sum(), 1))
                    found = index.query_image(image_descriptor(seg.rgba))[0].entry.id
                    hits[(background, "segmented")] += found == entry.id

    print()
    print(f"{total} pictures per background ({len(index)} meshes x {len(azimuths)} azimuths "
          f"{args.azimuths}, elevation {args.elevation:g}, {args.tile} px); chance "
          f"{100 / len(index):.1f}%")
    head = f"{'background':<12} {'raw top-1':>10} {'segmented top-1':>16} {'mask IoU':>9} " \
           f"{'seg. failed':>11}"
    print(head)
    print("-" * len(head))
    summary = {}
    for b in BACKGROUNDS:
        raw = 100 * hits[(b, "raw")] / total
        seg = 100 * hits[(b, "segmented")] / total
        iou = float(np.mean(ious[b])) if ious[b] else float("nan")
        summary[b] = {"raw": raw, "segmented": seg, "iou": iou, "failed": failures[b]}
        print(f"{b:<12} {raw:>9.1f}% {seg:>15.1f}% {iou:>9.3f} {failures[b]:>11}")
    print(f"\n{time.perf_counter() - start:.1f} s in all")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
