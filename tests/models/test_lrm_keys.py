"""Our LRM configurations have exactly the released checkpoints' parameter names and shapes."""

from __future__ import annotations

import csv

import pytest
import torch

from models.reconstruct.lrm.model import CHECKPOINT_PREFIX, LRM

VARIANTS = ["instant-mesh-large", "instant-mesh-base", "prm"]


def _reference_keys(reference_data_dir, variant: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in (reference_data_dir / "lrm_keys" / f"{variant}.keys.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        keys[name] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return keys


def _meta_model(variant: str) -> LRM:
    with torch.device("meta"):
        return LRM(variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_names_and_shapes_match_the_released_checkpoint(reference_data_dir, variant):
    state = _meta_model(variant).state_dict()
    ours = {CHECKPOINT_PREFIX + k: tuple(v.shape) for k, v in state.items()}
    reference = _reference_keys(reference_data_dir, variant)
    assert sorted(set(reference) - set(ours)) == [], "missing from our model"
    assert sorted(set(ours) - set(reference)) == [], "not in the released checkpoint"
    assert {k: v for k, v in ours.items() if v != reference[k]} == {}, "shape mismatches"


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_matches_summary(reference_data_dir, variant):
    with open(reference_data_dir / "lrm_keys" / "SUMMARY.tsv") as f:
        row = next(r for r in csv.DictReader(f, delimiter="\t") if r["variant"] == variant)
    model = _meta_model(variant)
    assert sum(p.numel() for p in model.parameters()) == int(row["total_parameters"])
    assert len(model.state_dict()) == int(row["state_dict_entries"])


def test_layer_norm_epsilons_follow_the_original_construction():
    model = _meta_model("instant-mesh-large")
    assert model.encoder.model.layernorm.eps == 1e-12
    assert model.encoder.model.encoder.layer[0].layernorm_before.eps == 1e-12
    assert model.transformer.layers[0].norm1.eps == 1e-5
    assert model.transformer.norm.eps == 1e-6
