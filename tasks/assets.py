"""A plain snapshot of an asset row, and the parameters of each of its stages.

Each stage's parameters include its upstream stage's hash, so changing anything early (a new
seed, another generator) re-runs everything after it while unchanged stages are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

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
    output_keys: dict = field(default_factory=dict)


def load_asset(config: PipelineConfig, asset_id: str) -> AssetSnapshot:
    with Session(engine_for(config.database_url)) as session:
        row = session.get(Asset, asset_id)
        if row is None:
            raise KeyError(f"no asset {asset_id}")
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
            output_keys=dict(row.output_keys or {}),
        )


STAGE_PREFIXES = ("refine", "texture", "export", "evaluate", "lrm")


def split_params(params: dict) -> dict[str, dict]:
    """Flat manifest ``params`` -> groups: ``refine_steps: 300`` -> ``{"refine": {"steps": 300}}``.

    ``tile`` stays top-level; every other key belongs to the generator.
    """
    groups: dict[str, dict] = {name: {} for name in (*STAGE_PREFIXES, "generator", "top")}
    for key, value in params.items():
        if key == "tile":
            groups["top"][key] = value
            continue
        prefix, _, rest = key.partition("_")
        if prefix in STAGE_PREFIXES and rest:
            groups[prefix][rest] = value
        else:
            groups["generator"][key] = value
    return groups


def stage_parameters(asset: AssetSnapshot, config: PipelineConfig) -> dict[str, dict]:
    """The parameters of every stage of ``asset``, chained through upstream hashes."""
    p = split_params(asset.params)
    own = {
        "bundle": {
            "generator": asset.generator,
            "kind": asset.kind,
            "prompt": asset.prompt,
            "image": asset.image_sha256,
            "bundle": asset.bundle_ref,
            "seed": asset.seed,
            "tile": int(p["top"].get("tile", config.tile)),
            "generator_params": p["generator"],
        },
        "init": {
            "init": asset.init,
            "lrm": {"path": config.lrm_path, **p["lrm"]} if asset.init == "lrm" else None,
        },
        "refine": {"refine": p.get("refine", {}), "seed": asset.seed},
        "texture": {"texture": p.get("texture", {})},
        "export": {"export": p.get("export", {})},
        "evaluate": {"evaluate": p.get("evaluate", {})},
        "publish": {"prompt": asset.prompt, "tags": asset.tags},
    }
    chained: dict[str, dict] = {}
    upstream = ""
    for stage in STAGES:
        params = {**own[stage], "upstream": upstream}
        chained[stage] = params
        upstream = params_hash(params)
    return chained
