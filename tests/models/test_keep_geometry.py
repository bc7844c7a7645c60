"""Keeping an input mesh's geometry: the retexture plan, init ``mesh``, refinement without steps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trimesh

from models.bundle.spec import BundleSpec
from models.parameters import NO_REFINEMENT, parse_stage_params
from models.reconstruct.init import InitContext, InitInputError, initial_mesh
from tests.models.kiss3dgen_fixtures import disc_bundle


def test_a_retexture_plans_refinement_without_steps_and_an_enhance_with_them():
    retexture = parse_stage_params({"mode": "retexture"}, generator="kiss3dgen-mesh", init="mesh")
    enhance = parse_stage_params({"mode": "enhance"}, generator="kiss3dgen-mesh", init="mesh")
    assert {k: getattr(retexture.refine, k) for k in NO_REFINEMENT} == NO_REFINEMENT
    assert enhance.refine.coarse_steps > 0 and enhance.refine.fine_steps > 0


def test_refinement_without_steps_returns_the_initial_mesh_unchanged():
    from models.reconstruct.refine import RefineParams, refine_mesh

    box = trimesh.creation.box(extents=(1.0, 0.6, 0.8))
    out = refine_mesh(disc_bundle(), box, RefineParams(**NO_REFINEMENT))
    np.testing.assert_array_equal(out.vertices, box.vertices)
    np.testing.assert_array_equal(out.faces, box.faces)
    assert out is not box


def test_init_mesh_places_the_input_mesh_in_the_bundle_frame(tmp_path):
    path = tmp_path / "box.stl"
    trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(path)
    bundle = disc_bundle()
    bundle.spec = replace(BundleSpec(), scale=0.5, offset=(0.1, 0.0, 0.0),
                          extra={"source_up": "y"})
    mesh = initial_mesh("mesh", bundle, InitContext(mesh_path=path))
    assert mesh.bounds[0] == pytest.approx([(-0.5 - 0.1) * 0.5, -0.15, -0.2])


def test_init_mesh_without_an_input_mesh_is_a_clear_error():
    bundle = disc_bundle()
    bundle.spec = replace(bundle.spec, extra={"source_up": "y"})
    with pytest.raises(InitInputError, match="needs a 'mesh' request"):
        initial_mesh("mesh", bundle, InitContext())
