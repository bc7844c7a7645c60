"""Regenerate the example manifest's input files (run from the repository root).

- ``inputs/reference_can.png``: a 3/4 view of the YCB master chef can (a reference image; the
  library generator finds the nearest object by appearance).
- ``inputs/supplied_bundle.png`` (+ ``.json``): the bundle of a two-colour toy rocket built from
  primitives (a bundle made elsewhere, for the ``file`` generator).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from foundry3d.sample_library import ycb_stl_folder
from models.bundle.spec import BundleSpec
from models.geometry.mesh import load_mesh, to_y_up
from models.render.views import render_bundle, render_colour_views

HERE = Path(__file__).resolve().parent / "inputs"


def toy_rocket() -> trimesh.Trimesh:
    """A red body, a yellow nose cone and three blue fins, +Y up."""
    body = trimesh.creation.cylinder(radius=0.25, height=1.0, sections=48)
    body.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    nose = trimesh.creation.cone(radius=0.25, height=0.45, sections=48)
    nose.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    nose.apply_translation([0, 0.5, 0])
    parts = [(body, (210, 40, 40)), (nose, (240, 200, 40))]
    for k in range(3):
        fin = trimesh.creation.box(extents=(0.5, 0.35, 0.04))
        fin.apply_translation([0.3, -0.35, 0])
        fin.apply_transform(trimesh.transformations.rotation_matrix(k * 2 * np.pi / 3, [0, 1, 0]))
        parts.append((fin, (40, 80, 200)))
    coloured = []
    for mesh, colour in parts:
        mesh.visual.vertex_colors = np.tile([*colour, 255], (len(mesh.vertices), 1))
        coloured.append(mesh)
    return trimesh.util.concatenate(coloured)


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    can = to_y_up(load_mesh(ycb_stl_folder() / "002_master_chef_can.stl"), "z")
    view = render_colour_views(can, [30.0], [12.0], BundleSpec(tile=256))[0]
    Image.fromarray(view).save(HERE / "reference_can.png")
    render_bundle(toy_rocket(), tile=256).save(HERE / "supplied_bundle.png")
    print(f"wrote {HERE}/reference_can.png and supplied_bundle.png/.json")


if __name__ == "__main__":
    main()
