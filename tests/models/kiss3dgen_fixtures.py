"""Shared pieces of the kiss3dgen tests: a tiny Flux folder, params at test size, bundles."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.bundle.spec import Bundle, BundleSpec, encode_normals
from models.generate.kiss3dgen.params import Kiss3DGenParams

#: Test bundle size: tile 32 -> 128 x 64 image, 16 x 8 = 128 image tokens in the tiny model.
TEST_TILE = 32
#: The tiny tokenizers are per character; 160 T5 tokens hold the bundle sentence + a caption.
TEST_SEQ = 160


def tiny_params(flux_path: Path, **overrides) -> Kiss3DGenParams:
    """Params at test size: 128 x 64, 2 steps, CPU float32, degenerate check off (random
    weights produce noise, which is what these tests compare)."""
    base = Kiss3DGenParams(
        flux_path=flux_path,
        width=4 * TEST_TILE,
        height=2 * TEST_TILE,
        steps=2,
        max_sequence_length=TEST_SEQ,
        dtype="float32",
        device="cpu",
        check_degenerate=False,
    )
    return replace(base, **overrides)


def disc_bundle(tile: int = TEST_TILE, radius: float = 0.3, colour=(200, 60, 30)) -> Bundle:
    """A bundle of a flat-shaded disc facing the camera in every view (white background)."""
    yy, xx = np.mgrid[:tile, :tile]
    inside = (xx + 0.5 - tile / 2) ** 2 + (yy + 0.5 - tile / 2) ** 2 < (radius * tile) ** 2
    colours = np.full((4, tile, tile, 3), 255, np.uint8)
    normals = np.full((4, tile, tile, 3), 255, np.uint8)
    colours[:, inside] = colour
    normals[:, inside] = encode_normals(np.array([0.0, 0.0, 1.0]))
    return Bundle.from_tiles(colours, normals, BundleSpec())


def write_tiny_library(folder: Path) -> Path:
    """A library of 2 trimesh primitives (GLB and STL, one z-up) with captions."""
    import trimesh

    folder.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=(1.0, 0.5, 0.8)).export(folder / "box.glb")
    trimesh.creation.cylinder(radius=0.3, height=1.2).export(folder / "cylinder.stl")
    rows = [
        {"id": "box", "path": "box.glb", "caption": "a flat wooden box", "tags": ["box"],
         "up": "y", "licence": "CC0"},
        {"id": "cylinder", "path": "cylinder.stl", "caption": "a tall metal can",
         "tags": ["can"], "up": "z", "licence": "CC0"},
    ]
    (folder / "library.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def tiny_params_of(cls, flux_path: Path | None, **overrides):
    """``cls`` (a :class:`Kiss3DGenParams` subclass) at the size and settings of
    :func:`tiny_params`, 4 steps so that strength 0.95 leaves 3 of them."""
    fields = {k: v for k, v in vars(tiny_params(flux_path, steps=4)).items()}
    fields.update(overrides)
    return cls(**fields)


def write_coloured_box(path: Path) -> Path:
    """A box with a different vertex colour per corner, as a GLB."""
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 0.6, 0.8))
    corners = np.asarray(box.vertices)
    rgb = np.round((corners - corners.min(0)) / np.ptp(corners, 0) * 200 + 30)
    colours = np.concatenate([rgb, np.full((8, 1), 255)], axis=1).astype(np.uint8)
    box.visual = trimesh.visual.ColorVisuals(box, vertex_colors=colours)
    path.parent.mkdir(parents=True, exist_ok=True)
    box.export(path)
    return path
