"""Mesh requests through ingest and the asset pipeline, with tiny random Flux + ControlNet
weights loaded from folders like real ones: the mesh is stored, handed to the generator, and a
retexture keeps the input geometry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy.orm import Session

from storage import queries
from storage.objects import open_store
from tasks.ingest import ingest_manifest
from tasks.resources import engine_for
from tests.flows.conftest import NO_VERDICT
from tests.models.kiss3dgen_fixtures import write_coloured_box

pytest.importorskip("diffusers")

#: Tiny-model settings: 64-pixel tiles, 4 steps (3 after strength 0.95), CPU float32, the
#: per-character tokenizers' sequence length, and no degenerate check (random weights draw noise).
TINY = {"tile": 64, "steps": 4, "max_sequence_length": 160, "dtype": "float32",
        "check_degenerate": False}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    from models.generate.kiss3dgen.tiny import save_tiny_controlnet, save_tiny_flux

    root = tmp_path_factory.mktemp("weights")
    return {"flux_path": str(save_tiny_flux(root / "flux", seed=0)),
            "controlnet_path": str(save_tiny_controlnet(root / "controlnet", seed=0))}


def _manifest(folder: Path, params: dict, prompt: str = "a blue box") -> Path:
    mesh = write_coloured_box(folder / "box.glb")
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump({"items": [
        # Random weights draw noise, not the mesh: the quality verdict judges nothing here.
        {"mesh": mesh.name, "prompt": prompt, "params": {**TINY, **NO_VERDICT, **params}},
    ]}))
    return path


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_ingest_stores_the_mesh_under_inputs_by_content(pipeline_config, tmp_path):
    manifest = _manifest(tmp_path, {"mode": "enhance"})
    result = ingest_manifest(manifest, pipeline_config)
    assert not result.rejected
    with Session(engine_for(pipeline_config.database_url)) as session:
        asset = queries.get_asset(session, result.asset_ids[0])
        digest = hashlib.sha256((tmp_path / "box.glb").read_bytes()).hexdigest()
        assert (asset.kind, asset.mesh_ref, asset.mesh_sha256) == (
            "mesh", f"inputs/{digest}.glb", digest)
    stored = open_store(pipeline_config.store_url).get_bytes(f"inputs/{digest}.glb")
    assert stored == (tmp_path / "box.glb").read_bytes()


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_the_controlnet_weights_are_part_of_a_mesh_assets_identity(pipeline_config, tmp_path):
    manifest = _manifest(tmp_path, {"mode": "enhance"})
    a = ingest_manifest(manifest, pipeline_config.model_copy(update={"controlnet_path": "/a"}))
    b = ingest_manifest(manifest, pipeline_config.model_copy(update={"controlnet_path": "/b"}))
    assert a.asset_ids != b.asset_ids


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_a_retexture_keeps_the_input_vertices_in_refined_glb(pipeline_config, weights, tmp_path):
    from flows.catalog import catalog_flow
    from models.geometry.glb import load_glb
    from models.geometry.mesh import load_mesh

    config = pipeline_config.model_copy(update=weights)
    manifest = _manifest(tmp_path, {"mode": "retexture"})
    summary = catalog_flow(str(manifest), config)
    assert (summary.produced, summary.failed, summary.rejected) == (1, 0, 0), summary
    store = open_store(config.store_url)
    with Session(engine_for(config.database_url)) as session:
        keys = queries.get_asset(session, summary.assets[0]["asset_id"]).output_keys
    sidecar = json.loads(store.get_bytes(keys["bundle.json"]))
    assert sidecar["keep_geometry"] is True
    (tmp_path / "refined.glb").write_bytes(store.get_bytes(keys["refined.glb"]))
    refined = np.asarray(load_glb(tmp_path / "refined.glb").vertices)
    source = np.asarray(load_mesh(tmp_path / "box.glb").vertices)
    expected = (source - np.asarray(sidecar["offset"])) * sidecar["scale"]
    assert refined.shape == expected.shape
    np.testing.assert_allclose(np.unique(refined.round(5), axis=0),
                               np.unique(expected.round(5), axis=0), atol=1e-5)
    assert store.exists(keys["asset.glb"])


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_without_weights_a_mesh_asset_fails_permanently_naming_each_missing_path(
    pipeline_config, tmp_path
):
    from flows.catalog import catalog_flow

    config = pipeline_config.model_copy(update={"flux_path": str(tmp_path / "no-flux"),
                                                "controlnet_path": str(tmp_path / "no-cn")})
    summary = catalog_flow(str(_manifest(tmp_path, {"mode": "edit"})), config)
    assert summary.failed == 1
    with Session(engine_for(config.database_url)) as session:
        asset = queries.get_asset(session, summary.assets[0]["asset_id"])
    assert asset.last_error_class.startswith("permanent:")
    assert "no-flux" in asset.last_error_message and "no-cn" in asset.last_error_message


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_an_edit_starts_refinement_from_the_input_mesh(pipeline_config, weights, tmp_path):
    from flows.catalog import catalog_flow
    from models.geometry.glb import load_glb
    from models.geometry.mesh import load_mesh

    config = pipeline_config.model_copy(update=weights)
    refine = {"refine_coarse_steps": 3, "refine_fine_steps": 2, "refine_coarse_resolution": 48,
              "refine_resolution": 64}
    summary = catalog_flow(str(_manifest(tmp_path, {"mode": "edit", **refine})), config)
    assert summary.produced == 1, summary
    store = open_store(config.store_url)
    with Session(engine_for(config.database_url)) as session:
        keys = queries.get_asset(session, summary.assets[0]["asset_id"]).output_keys
    sidecar = json.loads(store.get_bytes(keys["bundle.json"]))
    assert "keep_geometry" not in sidecar
    (tmp_path / "coarse.glb").write_bytes(store.get_bytes(keys["coarse.glb"]))
    coarse = np.asarray(load_glb(tmp_path / "coarse.glb").vertices)
    source = np.asarray(load_mesh(tmp_path / "box.glb").vertices)
    expected = (source - np.asarray(sidecar["offset"])) * sidecar["scale"]
    np.testing.assert_allclose(np.sort(coarse, axis=0), np.sort(expected, axis=0), atol=1e-5)
    (tmp_path / "refined.glb").write_bytes(store.get_bytes(keys["refined.glb"]))
    assert len(load_glb(tmp_path / "refined.glb").vertices) != len(coarse)  # remeshed, fitted


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_the_captioning_model_is_part_of_an_unprompted_enhances_identity_only(
    pipeline_config, tmp_path
):
    mesh = write_coloured_box(tmp_path / "box.glb")
    unprompted = tmp_path / "unprompted.yaml"
    unprompted.write_text(yaml.safe_dump({"items": [{"mesh": mesh.name, "params": TINY}]}))
    prompted = _manifest(tmp_path, {"mode": "enhance"})
    ids = {}
    for caption in ("/florence-a", "/florence-b"):
        config = pipeline_config.model_copy(update={"caption_path": caption})
        ids[caption] = (ingest_manifest(unprompted, config).asset_ids,
                        ingest_manifest(prompted, config).asset_ids)
    assert ids["/florence-a"][0] != ids["/florence-b"][0]
    assert ids["/florence-a"][1] == ids["/florence-b"][1]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_an_unprompted_enhance_fails_naming_the_configured_captioning_model(
    pipeline_config, weights, tmp_path
):
    from flows.catalog import catalog_flow

    config = pipeline_config.model_copy(
        update={**weights, "caption_path": str(tmp_path / "no-florence")})
    mesh = write_coloured_box(tmp_path / "box.glb")
    manifest = tmp_path / "unprompted.yaml"
    manifest.write_text(yaml.safe_dump({"items": [{"mesh": mesh.name, "params": TINY}]}))
    summary = catalog_flow(str(manifest), config)
    assert summary.failed == 1
    with Session(engine_for(config.database_url)) as session:
        asset = queries.get_asset(session, summary.assets[0]["asset_id"])
    assert asset.last_error_class == "permanent:WeightsMissingError"
    assert "no-florence" in asset.last_error_message


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_an_image_asset_with_zero123_configured_names_its_missing_weights(
    pipeline_config, weights, tmp_path
):
    from PIL import Image

    from flows.catalog import catalog_flow

    picture = np.full((64, 64, 3), 255, np.uint8)
    picture[16:48, 20:44] = (200, 30, 30)
    Image.fromarray(picture).save(tmp_path / "block.png")
    config = pipeline_config.model_copy(update={
        **weights, "redux_path": str(tmp_path / "no-redux"),
        "zero123_path": str(tmp_path / "no-zero123"), "lrm_path": str(tmp_path / "no-lrm.ckpt")})
    manifest = tmp_path / "image.yaml"
    manifest.write_text(yaml.safe_dump({"items": [
        {"image": "block.png", "generator": "kiss3dgen-image", "params": TINY}]}))
    summary = catalog_flow(str(manifest), config)
    assert summary.failed == 1
    with Session(engine_for(config.database_url)) as session:
        asset = queries.get_asset(session, summary.assets[0]["asset_id"])
    for name in ("no-redux", "no-zero123", "no-lrm.ckpt"):
        assert name in asset.last_error_message


@pytest.mark.parametrize("pipeline_config", ["local"], indirect=True)
def test_a_set_captioning_model_is_part_of_an_unprompted_image_assets_identity(
    pipeline_config, tmp_path
):
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "grey.png")
    manifest = tmp_path / "image.yaml"
    manifest.write_text(yaml.safe_dump({"items": [
        {"image": "grey.png", "generator": "kiss3dgen-image", "params": TINY}]}))
    ids = [ingest_manifest(manifest, pipeline_config.model_copy(
        update={"caption_path": caption})).asset_ids for caption in ("/a", "/b", None)]
    assert len({tuple(i) for i in ids}) == 3
