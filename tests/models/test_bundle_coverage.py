"""Coverage from a normal tile's blended edge pixels (models/bundle/coverage.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from models.bundle.coverage import edge_coverage, tile_coverages
from models.bundle.spec import Bundle, encode_normals, foreground_mask
from models.render.views import render_bundle

TILE = 512
#: The spec's sphere of radius 0.9: silhouette radius 195 px at 512-px tiles.
SPHERE_AREA = math.pi * 195.0**2
WHITE_RGB = np.array([255, 255, 255], dtype=np.float64)


@pytest.fixture(scope="module")
def sphere_tiles() -> np.ndarray:
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.9)
    return render_bundle(sphere, tile=TILE, normalise=False).normal_tiles()


def _square_tile(normal, coverage_of_edge_column: float) -> np.ndarray:
    """A 64-px tile: a square of ``normal`` whose right neighbour column is that normal
    blended with white by ``coverage_of_edge_column`` (the blend is linear in RGB)."""
    tile = np.full((64, 64, 3), 255, dtype=np.uint8)
    colour = encode_normals(np.asarray(normal, dtype=np.float64)).astype(np.float64)
    tile[16:48, 16:40] = colour.astype(np.uint8)
    blended = coverage_of_edge_column * colour + (1 - coverage_of_edge_column) * WHITE_RGB
    tile[16:48, 40] = np.round(blended).astype(np.uint8)
    return tile


def test_a_spheres_coverage_sums_to_its_silhouette_area(sphere_tiles):
    for area in tile_coverages(sphere_tiles).sum(axis=(1, 2)):
        assert abs(area - SPHERE_AREA) < 0.0005 * SPHERE_AREA


def test_the_golden_spheres_coverage_sums_to_its_silhouette_area(reference_data_dir):
    # Drawn by an independent implementation of the spec at 256-px tiles: radius 97.5 px.
    golden = Bundle.load(reference_data_dir / "golden" / "sphere_r0.9.png")
    area = math.pi * 97.5**2
    for covered in tile_coverages(golden.normal_tiles()).sum(axis=(1, 2)):
        assert abs(covered - area) < 0.001 * area


def test_the_spec_mask_is_wider_than_the_object_it_shows(sphere_tiles):
    # Why refinement fits coverage: the binary rule calls a pixel a fifth covered foreground.
    for area in foreground_mask(sphere_tiles).sum(axis=(1, 2)):
        assert area > 1.0015 * SPHERE_AREA


def test_coverage_is_one_inside_the_mask_and_zero_away_from_it(sphere_tiles):
    coverage = edge_coverage(sphere_tiles[0])
    centre = TILE // 2
    assert coverage[centre - 150:centre + 150, centre - 100:centre + 100].min() == 1.0
    assert coverage[:40].max() == 0.0


@pytest.mark.parametrize("normal", [(1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.6, 0.0, 0.8),
                                    (-0.577, 0.577, 0.577)])
@pytest.mark.parametrize("share", [0.15, 0.5, 0.85])
def test_an_edge_pixel_blended_with_white_has_the_blends_coverage(normal, share):
    coverage = edge_coverage(_square_tile(normal, share))
    assert np.allclose(coverage[20:44, 40], share, atol=0.02)


def test_a_tile_drawn_without_blending_keeps_the_spec_mask():
    # A generator that draws hard edges leaves nothing to read: coverage is the mask itself.
    tile = np.full((64, 64, 3), 255, dtype=np.uint8)
    rows, cols = np.mgrid[0:64, 0:64]
    disc = (rows - 31.5) ** 2 + (cols - 31.5) ** 2 < 20.0**2
    tile[disc] = encode_normals(np.array([0.3, -0.2, 0.933]))
    assert np.allclose(edge_coverage(tile), disc.astype(np.float32), atol=0.01)


def test_a_part_one_pixel_thin_keeps_the_spec_mask():
    tile = np.full((32, 32, 3), 255, dtype=np.uint8)
    tile[4:28, 16] = encode_normals(np.array([0.0, 0.0, 1.0]))
    assert np.array_equal(edge_coverage(tile), foreground_mask(tile).astype(np.float32))


def test_refinements_silhouette_targets_fit_the_reference_best_at_its_own_size():
    from models.bundle.cameras import BundleCameras
    from models.raster import get_rasteriser
    from models.reconstruct.refine import _downsample_targets, _render

    mesh = trimesh.creation.capsule(height=0.8, radius=0.45, count=[48, 48])
    bundle = render_bundle(mesh, tile=TILE, normalise=False)
    targets = _downsample_targets(bundle, 256, torch.device("cpu"))
    mvp = torch.from_numpy(BundleCameras.from_spec(bundle.spec).mvp.astype(np.float32))
    faces = torch.from_numpy(np.asarray(mesh.faces, dtype=np.int64))
    rasteriser = get_rasteriser("cpu")

    def silhouette_error(scale: float) -> float:
        vertices = torch.from_numpy((np.asarray(mesh.vertices) * scale).astype(np.float32))
        _, rendered, _ = _render(rasteriser, vertices, faces, mvp, 256, True)
        return float((rendered - targets.masks).square().mean())

    own = silhouette_error(1.0)
    assert own < silhouette_error(1.002) and own < silhouette_error(0.998)
