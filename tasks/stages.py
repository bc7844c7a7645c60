"""The seven stage tasks of one asset. Each is glue: fetch inputs, call models/, publish outputs.

Every task takes the asset (plain values, read once by the asset flow), the asset's stage plan
(typed parameters and hashes, computed once per run: :func:`tasks.assets.plan_stages`), the keys
its upstream stages produced and the pipeline config, and returns its own output keys. Tasks
read their parameters from the plan only, so what a stage's hash covers is what it reads.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from prefect import task
from prefect.runtime import flow_run

from tasks.assets import AssetSnapshot, StagePlan
from tasks.config import PipelineConfig
from tasks.errors import retry_condition
from tasks.resources import rasteriser_for, torch_device
from tasks.stage import StageIO, run_stage

RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_condition}


def _run(
    config: PipelineConfig, asset: AssetSnapshot, plan: StagePlan, stage: str, work
) -> dict[str, str]:
    return run_stage(config, asset.id, stage, plan.hashes[stage], work,
                     flow_run_id=_flow_run_id())


def _flow_run_id() -> str | None:
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def _load_bundle(io: StageIO, keys: dict[str, str]):
    from models.bundle.spec import Bundle

    png = io.fetch(keys["bundle.png"], "bundle.png")
    io.fetch(keys["bundle.json"], "bundle.json")
    return Bundle.load(png)


def _load_mesh(io: StageIO, key: str):
    from models.geometry.glb import load_glb

    return load_glb(io.fetch(key, Path(key).name))


@task(name="bundle", **RETRIES)
def bundle_task(asset: AssetSnapshot, plan: StagePlan, config: PipelineConfig) -> dict[str, str]:
    """Stage I: the bundle image (``bundle.png`` + ``bundle.json``, ``match.json`` if any)."""
    from models.generate.base import GenerationRequest, GeneratorContext
    from models.generate.registry import generate_bundle

    def work(io: StageIO) -> dict:
        request = GenerationRequest(
            kind=asset.kind,
            prompt=asset.prompt,
            image=_read_image(io, asset.image_ref) if asset.image_ref else None,
            bundle_path=_fetch_bundle_file(io, asset.bundle_ref) if asset.bundle_ref else None,
            mesh_path=_fetch_mesh(io, asset.mesh_ref) if asset.mesh_ref else None,
            seed=asset.seed,
            tile=plan.params.bundle.tile,
            params=dict(plan.params.generator_given),
        )
        context = GeneratorContext(
            library_path=Path(config.library_path),
            device=torch_device(config.device),
            flux_path=config.flux_path,
            lora_path=config.lora_path,
            lora_scale=config.lora_scale,
            flux_memory=config.flux_memory,
            controlnet_path=config.controlnet_path,
            redux_path=config.redux_path,
            matting_path=config.matting_path,
            caption_path=config.caption_path,
            zero123_path=config.zero123_path,
            lrm_path=config.lrm_path,
            lrm_variant=config.lrm_variant,
        )
        generated = generate_bundle(asset.generator, request, context)
        generated.bundle.save(io.local("bundle.png"))
        io.publish("bundle.png")
        io.publish("bundle.json")
        if generated.match is not None:
            io.local("match.json").write_text(json.dumps(generated.match, indent=1))
            io.publish("match.json")
        return generated.metrics

    return _run(config, asset, plan, "bundle", work)


@task(name="init", **RETRIES)
def init_task(
    asset: AssetSnapshot, plan: StagePlan, inputs: dict[str, str], config: PipelineConfig
) -> dict[str, str]:
    """Stage II start: the coarse mesh ``coarse.glb`` (sphere, library mesh, LRM, or the
    request's input mesh)."""
    from models.geometry.glb import export_glb
    from models.reconstruct.hull import HullParams
    from models.reconstruct.init import InitContext
    from models.reconstruct.pipeline import initial_mesh

    params = plan.params.init

    def work(io: StageIO) -> dict:
        bundle = _load_bundle(io, inputs)
        context = InitContext(
            library_path=Path(config.library_path),
            lrm_path=str(params.lrm_path) if params.lrm_path is not None else None,
            lrm_variant=params.lrm_variant,
            device=torch_device(config.device),
            sphere_radius=params.sphere_radius,
            hull=HullParams(grid=params.hull_resolution),
            mesh_path=_fetch_mesh(io, asset.mesh_ref) if asset.mesh_ref else None,
        )
        mesh = initial_mesh(asset.init, bundle, context)
        export_glb(mesh, io.local("coarse.glb"))
        io.publish("coarse.glb")
        return {"init_faces": float(len(mesh.faces))}

    return _run(config, asset, plan, "init", work)


@task(name="refine", **RETRIES)
def refine_task(
    asset: AssetSnapshot, plan: StagePlan, inputs: dict[str, str], config: PipelineConfig
) -> dict[str, str]:
    """ISOMER-style refinement of the coarse mesh against the normal maps: ``refined.glb``."""
    from models.geometry.glb import export_glb
    from models.reconstruct.hull import HullParams
    from models.reconstruct.pipeline import hull_prior_inputs, refine
    from models.reconstruct.visibility import outside_mask_area_fraction, unseen_area_fraction

    def work(io: StageIO) -> dict:
        bundle = _load_bundle(io, inputs)
        coarse = _load_mesh(io, inputs["coarse.glb"])
        device = torch_device(config.device)
        # The device is the worker's, not a parameter: the hash covers the plan's "cpu".
        params = replace(plan.params.refine, device=device)

        def report(step: int, total: int, losses: dict) -> None:
            io.progress(step, total, ", ".join(f"{k} {v:.3g}" for k, v in losses.items()))

        rasteriser = rasteriser_for(config.rasteriser, device)
        # A visual hull start is also refinement's prior, as in `foundry3d reconstruct` (the
        # init stage's hash, chained into this one's, covers the hull's resolution).
        prior = (hull_prior_inputs(bundle, coarse,
                                   HullParams(grid=plan.params.init.hull_resolution))
                 if asset.init == "hull" else {})
        # The guard keeps the coarse mesh when refinement matched the views worse than it.
        refined, kept, losses = refine(
            bundle, coarse, params, rasteriser=rasteriser, progress=report, **prior
        )
        export_glb(refined, io.local("refined.glb"))
        io.publish("refined.glb")
        return {
            "refined_faces": float(len(refined.faces)),
            "refine_kept_init": float(kept == "init"),
            **{f"refine_{k}": float(v) for k, v in losses.items()},
            "unseen_area_fraction": unseen_area_fraction(
                bundle.spec, refined, rasteriser=rasteriser
            ),
            "outside_mask_area_fraction": outside_mask_area_fraction(
                bundle.masks(), bundle.spec, refined
            ),
        }

    return _run(config, asset, plan, "refine", work)


@task(name="texture", **RETRIES)
def texture_task(
    asset: AssetSnapshot, plan: StagePlan, inputs: dict[str, str], config: PipelineConfig
) -> dict[str, str]:
    """Colour projection from the 4 views onto the refined mesh: ``textured.glb``."""
    from models.geometry.glb import export_glb
    from models.reconstruct.texture import project_colours

    def work(io: StageIO) -> dict:
        bundle = _load_bundle(io, inputs)
        refined = _load_mesh(io, inputs["refined.glb"])
        textured = project_colours(
            bundle, refined,
            rasteriser=rasteriser_for(config.rasteriser, torch_device(config.device)),
            **plan.params.texture.keywords(),
        )
        export_glb(textured, io.local("textured.glb"))
        io.publish("textured.glb")
        return {}

    return _run(config, asset, plan, "texture", work)


@task(name="export", **RETRIES)
def export_task(
    asset: AssetSnapshot, plan: StagePlan, inputs: dict[str, str], config: PipelineConfig
) -> dict[str, str]:
    """The deliverables: ``asset.glb`` + LODs (baked textures, normal maps), extra formats,
    ``preview.png``, ``thumbnail.png`` and ``turntable.webp`` (``plan.params.export``)."""
    from models.export.asset import export_asset

    def work(io: StageIO) -> dict:
        bundle = _load_bundle(io, inputs)
        mesh = _load_mesh(io, inputs["textured.glb"])
        match = {}
        if "match.json" in inputs:
            match = json.loads(io.fetch(inputs["match.json"]).read_text())
        provenance = {
            "prompt": asset.prompt, "image_sha256": asset.image_sha256, "seed": asset.seed,
            "variant": asset.variant, "generator": asset.generator, "init": asset.init,
            "weights": {"flux": str(config.flux_path or ""), "lora": str(config.lora_path or ""),
                        "lrm": str(config.lrm_path or "")},
            "source": {k: match[k] for k in ("id", "path", "licence") if k in match} or None,
        }
        result = export_asset(
            mesh, bundle, io.local("asset.glb").parent, plan.params.export, provenance=provenance,
            rasteriser=rasteriser_for(config.rasteriser, torch_device(config.device)),
        )
        for name in result.files:
            io.publish(name)
        return {f"export_lod{k}_faces": float(n) for k, n in enumerate(result.lod_faces)}

    return _run(config, asset, plan, "export", work)


@task(name="evaluate", **RETRIES)
def evaluate_task(
    asset: AssetSnapshot, plan: StagePlan, inputs: dict[str, str], config: PipelineConfig
) -> dict[str, str]:
    """Metrics of the asset against its bundle (and its reference mesh when one exists)."""
    from models.evaluate.asset import evaluate_asset
    from models.export.asset import load_in_bundle_frame

    def work(io: StageIO) -> dict:
        bundle = _load_bundle(io, inputs)
        mesh = load_in_bundle_frame(io.fetch(inputs["asset.glb"], "asset.glb"))
        metrics = evaluate_asset(
            bundle, mesh, library_path=Path(config.library_path),
            samples=plan.params.evaluate.samples,
        )
        io.local("metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        io.publish("metrics.json")
        return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}

    return _run(config, asset, plan, "evaluate", work)


REVIEW_ERROR_CLASS = "review:QualityVerdict"
"""The error class a ``needs_review`` asset carries; its message lists the missed thresholds."""


def quality_verdict(asset: AssetSnapshot, plan: StagePlan, config: PipelineConfig):
    """The quality verdict (:class:`models.evaluate.verdict.QualityVerdict`) on the metrics the
    evaluate stage recorded for ``asset``, under the thresholds of its evaluate parameters.

    Read from the database, so a re-run whose evaluate stage was skipped (done with the same
    parameters) judges exactly what that stage measured. Retried during a database outage.
    """
    from models.evaluate.verdict import judge_quality
    from storage import queries
    from storage.db import in_transaction
    from tasks.resources import engine_for

    metrics = in_transaction(
        engine_for(config.database_url),
        lambda session: queries.get_metrics(session, asset.id),
        retry_seconds=config.db_retry_seconds,
    )
    return judge_quality(metrics, plan.params.evaluate)


@task(name="publish", **RETRIES)
def publish_task(
    asset: AssetSnapshot, plan: StagePlan, inputs: dict[str, str], config: PipelineConfig
) -> dict[str, str]:
    """Index the asset for search once every artefact it claims is really in the store."""
    from sqlalchemy.orm import Session

    from models.embed.text import embed_texts
    from storage.search import asset_search_text, index_prompt
    from tasks.resources import engine_for, store_for

    def work(io: StageIO) -> dict:
        store = store_for(config.store_url)
        missing = [key for key in inputs.values() if not store.exists(key)]
        if missing:
            raise FileNotFoundError(f"artefacts missing from the store: {', '.join(missing)}")
        with Session(engine_for(config.database_url)) as session:
            text = asset.prompt or asset_search_text(session, asset.id, _match_caption(io, inputs))
            embedding = embed_texts([text])[0]
            index_prompt(session, asset.id, text, list(asset.tags), embedding)
            session.commit()
        return {}

    return _run(config, asset, plan, "publish", work)


def _match_caption(io: StageIO, inputs: dict[str, str]) -> str | None:
    """The caption of the library mesh an image or bundle request matched, if any."""
    if "match.json" not in inputs:
        return None
    match = json.loads(io.fetch(inputs["match.json"], "match.json").read_text())
    return match.get("caption") or match.get("id")


def _read_image(io: StageIO, key: str) -> np.ndarray:
    """The reference image as ``(H, W, 3)`` uint8, scaled down to what a generator can use
    before it is decoded in full (a huge PNG would otherwise take gigabytes)."""
    from intake.images import load_reference_image

    return load_reference_image(io.fetch(key, "reference" + Path(key).suffix))


def _fetch_mesh(io: StageIO, key: str) -> Path:
    return io.fetch(key, "input_mesh" + Path(key).suffix)


def _fetch_bundle_file(io: StageIO, key: str) -> Path:
    png = io.fetch(key, "supplied_bundle.png")
    sidecar = str(Path(key).with_suffix(".json"))
    if io.store.exists(sidecar):
        io.fetch(sidecar, "supplied_bundle.json")
    return png
