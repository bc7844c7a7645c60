"""The benchmark's depth oracle: the reference's exact depth in place of the integrated normal
maps, where the normal maps hide a step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import trimesh

from models.geometry.mesh import normalise_mesh
from models.raster import get_rasteriser
from models.reconstruct.depth_target import INTEGRATE_RESOLUTION
from models.reconstruct.hull import bundle_integrals
from models.render.views import render_bundle

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("depth_oracle", ROOT / "benchmarks/depth_oracle.py")
depth_oracle = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(depth_oracle)

TILE = 256


def upright_cylinder(radius: float, height: float, top: float) -> trimesh.Trimesh:
    """A closed cylinder along +Y whose top face lies at ``top``."""
    cylinder = trimesh.creation.cylinder(radius=radius, height=height, sections=96)
    cylinder.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    cylinder.apply_translation([0.0, top - height / 2, 0.0])
    return cylinder


def lipped_cup() -> trimesh.Trimesh:
    """A body (radius 0.5) under a wider ring (radius 0.68, 0.14 tall) at its top: the ring's
    underside faces down, away from every view 5 degrees above the horizon."""
    return trimesh.util.concatenate([upright_cylinder(0.5, 1.0, 0.5),
                                     upright_cylinder(0.68, 0.14, 0.5)])


def integration_case(source: trimesh.Trimesh):
    """``source``'s bundle, its bundle-frame mesh, the rasteriser, the depth term's block size
    and the reference's log depth ``(4, L, L)`` at that block size."""
    rasteriser = get_rasteriser("cpu")
    bundle = render_bundle(source, tile=TILE, rasteriser=rasteriser)
    reference, _, _ = normalise_mesh(source)
    factor = max(1, TILE // INTEGRATE_RESOLUTION)
    true = depth_oracle.reference_log_depth(bundle, reference, TILE // factor, rasteriser)
    return bundle, reference, rasteriser, factor, true


@pytest.fixture
def cup_case():
    # A fresh bundle per test: the oracle replaces what this bundle integrates to.
    return integration_case(lipped_cup())


def worst_piece_spread(integrals, true) -> float:
    """The largest spread (max - min) of integrated minus true log depth within one piece,
    over the pixels a view's integral trusts as fully inside the mask."""
    worst = 0.0
    for view, integral in enumerate(integrals):
        known = integral.mask & np.isfinite(true[view])
        for piece in np.unique(integral.pieces[known]):
            members = known & (integral.pieces == piece)
            if members.sum() < 64:
                continue
            gap = integral.log_depth[members] - true[view][members]
            worst = max(worst, float(np.percentile(gap, 99) - np.percentile(gap, 1)))
    return worst


def test_the_normal_maps_hide_the_step_under_a_cups_lip(cup_case):
    bundle, _, _, factor, true = cup_case
    plain, _, _, _, plain_true = integration_case(upright_cylinder(0.5, 1.0, 0.5))
    assert worst_piece_spread(bundle_integrals(plain, factor), plain_true) < 0.005
    # The lip's 0.18 step at the cameras' distance (about 4.5) is 0.04 in log depth.
    assert worst_piece_spread(bundle_integrals(bundle, factor), true) > 0.02


def test_the_depth_oracle_integrates_the_reference_depth_exactly(cup_case):
    bundle, reference, rasteriser, factor, true = cup_case
    depth_oracle.use_reference_depth(bundle, reference, rasteriser)
    assert worst_piece_spread(bundle_integrals(bundle, factor), true) < 1e-9
