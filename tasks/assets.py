"""A plain snapshot of an asset row, and the plan of its stages: typed parameters and hashes.

The plan is computed once per asset run (:func:`plan_stages`) and handed to every stage task;
:func:`retried_params` checks a retry's parameter changes the same way.
Each stage's hash covers exactly what the stage reads (its typed parameters as plain values)
plus its upstream stage's hash, so changing anything early (a new seed, another generator)
re-runs everything after it, changing a late parameter re-runs that stage and the ones after
it only, and unchanged stages are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from models.parameters import (
    AssetParameters,
    ParameterError,
    check_manifest_params,
    check_parameter,
    parse_stage_params,
)
from storage import queries
from storage.schema import Asset
from tasks.config import PipelineConfig
from tasks.resources import engine_for
from tasks.stage import STAGES, params_hash


@dataclass(frozen=True)
class AssetSnapshot:
    """The request behind an asset, as plain values."""

    id: str
    kind: str
    prompt: str | None
    image_ref: str | None
    image_sha256: str | None
    bundle_ref: str | None
    seed: int
    variant: int
    generator: str
    init: str
    params: dict = field(default_factory=dict)
    tags: list = field(default_factory=list)
    mesh_ref: str | None = None
    """Store key of the input mesh of a ``mesh`` request."""
    mesh_sha256: str | None = None


def snapshot(row: Asset) -> AssetSnapshot:
    """The plain values of an asset row (read inside the caller's session)."""
    return AssetSnapshot(
        id=row.id,
        kind=row.kind,
        prompt=row.prompt,
        image_ref=row.image_ref,
        image_sha256=row.image_sha256,
        bundle_ref=row.bundle_ref,
        seed=row.seed,
        variant=row.variant,
        generator=row.generator,
        init=row.init,
        params=dict(row.params or {}),
        tags=list(row.tags or []),
        mesh_ref=row.mesh_ref,
        mesh_sha256=row.mesh_sha256,
    )


@dataclass(frozen=True)
class StagePlan:
    """Everything the stage tasks of one asset need to know besides the asset itself."""

    params: AssetParameters
    """Typed parameters of every stage."""
    hashes: dict[str, str]
    """Stage -> hash of what it reads, chained through the upstream stage's hash."""


def asset_parameters(asset: AssetSnapshot, config: PipelineConfig) -> AssetParameters:
    """The typed parameters of ``asset``'s stages: its manifest ``params`` over the settings.

    Raises :class:`models.parameters.ParameterError` (permanent) on a bad key or value.
    """
    return parse_stage_params(
        asset.params,
        generator=asset.generator,
        init=asset.init,
        defaults={
            "tile": config.tile,
            "lrm_path": config.lrm_path,
            "lrm_variant": config.lrm_variant,
            "refine_seed": asset.seed,
        },
    )


def plan_stages(asset: AssetSnapshot, config: PipelineConfig) -> StagePlan:
    """Parameters and hashes of every stage of ``asset``, computed once per asset run."""
    params = asset_parameters(asset, config)
    reads: dict[str, dict[str, Any]] = {
        "bundle": {
            "generator": asset.generator,
            "kind": asset.kind,
            "prompt": asset.prompt,
            "image": asset.image_sha256,
            "bundle": asset.bundle_ref,
            "seed": asset.seed,
            # only mesh requests read a mesh: every other asset keeps its stage hashes
            **({"mesh": asset.mesh_sha256 or asset.mesh_ref} if asset.mesh_ref else {}),
            **params.read_by("bundle"),
        },
        "init": {"init": asset.init, **params.read_by("init")},
        **{stage: params.read_by(stage) for stage in ("refine", "texture", "export", "evaluate")},
        "publish": {"prompt": asset.prompt, "tags": list(asset.tags)},
    }
    hashes: dict[str, str] = {}
    upstream = ""
    for stage in STAGES:
        upstream = hashes[stage] = params_hash({**reads[stage], "upstream": upstream})
    return StagePlan(params=params, hashes=hashes)


def retried_params(
    config: PipelineConfig, asset_ids: list[str], overrides: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Asset id -> its parameters with ``overrides`` applied, each checked against the stages of
    its generator and init (empty when there are no overrides).

    Raises :class:`models.parameters.ParameterError` on an override that is no stage's
    parameter (even when no asset is selected), or naming the asset and the first bad key.
    Nothing is changed: the caller writes the result.
    """
    if not overrides:
        return {}
    for key, value in overrides.items():
        check_parameter(key, value)
    out: dict[str, dict[str, Any]] = {}
    with Session(engine_for(config.database_url)) as session:
        for asset_id in asset_ids:
            asset = queries.get_asset(session, asset_id)
            if asset is None:
                continue
            params = {**(asset.params or {}), **overrides}
            try:
                check_manifest_params(params, generator=asset.generator, init=asset.init)
            except ParameterError as exc:
                raise ParameterError(f"asset {asset_id[:12]}: {exc}") from None
            out[asset_id] = params
    return out
