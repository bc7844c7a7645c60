"""The guard's view error runs on refinement's torch threads and gives the same losses."""

from __future__ import annotations

import pytest
import torch
import trimesh

from models.reconstruct.refine import RefineParams, view_error
from models.render.views import render_bundle


@pytest.fixture(scope="module")
def box_bundle():
    box = trimesh.creation.box((1.0, 0.6, 0.8))
    return render_bundle(box, tile=128), trimesh.creation.icosphere(subdivisions=3, radius=0.6)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_view_error_restores_the_callers_torch_threads(box_bundle, two_threads):
    bundle, mesh = box_bundle
    view_error(bundle, mesh, RefineParams(resolution=64, torch_threads=1))
    assert torch.get_num_threads() == 2


def test_view_error_on_one_thread_equals_the_view_error_on_two(box_bundle, two_threads):
    bundle, mesh = box_bundle
    one = view_error(bundle, mesh, RefineParams(resolution=128, torch_threads=1))
    two = view_error(bundle, mesh, RefineParams(resolution=128, torch_threads=None))
    assert one == two
    assert one["total"] > 0
