"""Stage II as one pipeline: bundle -> initial mesh -> refinement -> colours -> metrics.

:func:`reconstruct_bundle` is the one place Stage II is assembled; the CLI (``foundry3d
reconstruct``), ``benchmarks/reconstruct.py`` and the stage tasks call it or its per-stage
pieces (:func:`initial_mesh`, :func:`refine`, :func:`project_colours`), so they all run the same
reconstruction. Everything is in the bundle frame (+Y up, front +Z, object within
``[-0.9, 0.9]^3``); :func:`models.geometry.frames.to_source_frame` maps a result back.

Steps:
1. the initial mesh by name (``hull`` by default, ``sphere``, ``library``, ``lrm``) or a given
   bundle-frame mesh;
2. refinement against the normal maps and masks, on the schedule of that init (a visual hull is
   already close, so it gets a short coarse phase and stops when the losses stop improving);
3. the hull as a prior (hull init only, :mod:`models.reconstruct.hull_prior`): vertices that
   left the masks' hull are pulled back onto it, and unseen regions whose seen surroundings lie
   on the hull take the hull's shape instead of a flat membrane (a ball's poles), rounded ends
   (a fruit's bottom) at least half of it;
4. the guard: the refined mesh is kept unless it matches the views worse than its init did
   (judged by refinement's own view losses, never by a reference mesh);
5. colours projected from the 4 views;
6. metrics: view losses, unseen area, mesh health, and the seconds of every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import trimesh

from models.bundle.memo import decoded_views
from models.bundle.spec import Bundle
from models.reconstruct.hull import HullParams, visual_hull, visual_hull_with_bound
from models.reconstruct.hull_prior import HullPriorParams, hull_prior
from models.reconstruct.init import InitContext, fit_in_box, initial_mesh
from models.reconstruct.init_params import INIT_SCHEDULES
from models.reconstruct.refine import Progress, RefineParams, refine_mesh, view_error
from models.reconstruct.texture import project_colours
from models.reconstruct.visibility import outside_mask_area_fraction, unseen_area_fraction


def schedule_for(init: str, overrides: dict | None = None) -> RefineParams:
    """The refinement params of init ``init`` (a name of :data:`INIT_SCHEDULES`), with
    ``overrides`` (RefineParams field names) on top; an unknown field raises naming the nearest."""
    base = RefineParams.from_mapping(INIT_SCHEDULES.get(init, INIT_SCHEDULES["mesh"]))
    return RefineParams.from_mapping(overrides, base=base)


@dataclass
class Reconstruction:
    """What :func:`reconstruct_bundle` returns; meshes in the bundle frame."""

    mesh: trimesh.Trimesh
    """The reconstructed geometry (the refined mesh, or the init when the guard kept it)."""
    coloured: trimesh.Trimesh | None
    """``mesh`` with vertex colours projected from the views (None with ``texture=False``)."""
    init_mesh: trimesh.Trimesh
    """The initial mesh refinement started from."""
    kept: str
    """``"refined"`` or ``"init"``: which of the two the guard kept."""
    metrics: dict[str, float] = field(default_factory=dict)
    """View losses (``view_normal``, ``view_mask``, ``view_loss``, ``init_view_loss``),
    ``unseen_area_fraction``, ``outside_mask_area_fraction`` (surface the views rule out:
    membranes), ``mesh_faces``, ``mesh_components``, ``mesh_watertight``."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step: ``init``, ``refine`` (``guard`` included), ``texture``, ``metrics``,
    ``total``; and within ``refine``: ``refine_setup``, ``refine_coarse``, ``refine_fine``,
    ``refine_remesh`` (part of the two phases), ``refine_clean``, ``guard``."""


def refine(
    bundle: Bundle,
    init_mesh: trimesh.Trimesh,
    params: RefineParams,
    *,
    rasteriser=None,
    progress: Progress | None = None,
    keep_better: bool = True,
    timings: dict[str, float] | None = None,
    hull: trimesh.Trimesh | None = None,
    bound: trimesh.Trimesh | None = None,
    prior: HullPriorParams | None = None,
) -> tuple[trimesh.Trimesh, str, dict[str, float]]:
    """Refine ``init_mesh`` against ``bundle``; returns ``(mesh, kept, view losses)``.

    With ``hull`` (the bundle's visual hull) the refined mesh goes through
    :func:`models.reconstruct.hull_prior.hull_prior` (settings ``prior``, pulled within
    ``bound``, the masks' hull without rounded corners) before the guard judges it; the losses
    dict then also holds ``hull_prior_pulled`` (vertices) and ``hull_prior_regions`` (unseen
    regions given some of the hull's shape).

    ``timings``, when given, receives refinement's seconds per part (``refine_coarse``,
    ``refine_fine``, ``refine_remesh``, ... see :func:`refine_mesh`) and ``guard``.
    With ``keep_better`` the init is returned (``kept == "init"``) when its view loss
    (:func:`view_error`) is lower than the refined mesh's; the losses dict holds both totals
    (``view_loss``, ``init_view_loss``) and the kept mesh's ``view_normal``/``view_mask``.
    """
    parts: dict[str, float] = {}
    refined = refine_mesh(bundle, init_mesh, params, rasteriser=rasteriser, progress=progress,
                          timings=parts)
    if timings is not None:
        timings.update({f"refine_{k}": v for k, v in parts.items()})
    extra: dict[str, float] = {}
    if hull is not None:
        mark = time.perf_counter()
        refined, report = hull_prior(bundle, refined, hull, bound, prior, rasteriser=rasteriser)
        extra = {"hull_prior_pulled": float(report.pulled),
                 "hull_prior_regions": float(sum(w > 0 for _, _, w in report.regions))}
        if timings is not None:
            timings["hull_prior"] = time.perf_counter() - mark
    mark = time.perf_counter()
    got = view_error(bundle, refined, params, rasteriser=rasteriser)
    losses = {"view_normal": got["normal"], "view_mask": got["mask"], "view_loss": got["total"],
              **extra}
    if not keep_better:
        if timings is not None:
            timings["guard"] = time.perf_counter() - mark
        return refined, "refined", losses
    before = view_error(bundle, init_mesh, params, rasteriser=rasteriser)
    losses["init_view_loss"] = before["total"]
    if timings is not None:
        timings["guard"] = time.perf_counter() - mark
    if before["total"] < got["total"]:
        losses.update(view_normal=before["normal"], view_mask=before["mask"],
                      view_loss=before["total"])
        return init_mesh, "init", losses
    return refined, "refined", losses


def hull_prior_inputs(bundle: Bundle, hull: trimesh.Trimesh, hull_params: HullParams,
                      prior: HullPriorParams | None = None) -> dict:
    """The keyword arguments of :func:`refine` that apply the hull prior to a refinement that
    started from ``hull`` (the bundle's visual hull, carved with ``hull_params``)."""
    # The masks' hull without rounded corners: the only true outer bound.
    bound = visual_hull(bundle, replace(hull_params, round_corners=False, depth_carve=False))
    return {"hull": hull, "bound": bound, "prior": prior or HullPriorParams()}


def reconstruct_bundle(
    bundle: Bundle,
    init: str | trimesh.Trimesh = "hull",
    params: RefineParams | None = None,
    *,
    context: InitContext | None = None,
    texture: bool = True,
    keep_better: bool = True,
    prior: HullPriorParams | None = HullPriorParams(),
    rasteriser=None,
    progress: Progress | None = None,
) -> Reconstruction:
    """Reconstruct a mesh from ``bundle``'s normal maps and masks (Stage II).

    ``init``: an initialiser name (``hull``, ``sphere``, ``library``, ``lrm``) or a mesh already
    in the bundle frame. ``params``: refinement settings (default: :func:`schedule_for` the
    init); the sphere init takes its radius from ``params.sphere_radius``. ``context``: what
    the ``library``/``lrm`` inits need. ``prior``: settings of the hull prior after
    refinement of a hull init (:mod:`models.reconstruct.hull_prior`); ``None`` turns it off.
    ``progress(step, total, losses)`` follows refinement.
    """
    if rasteriser is None:
        from models.raster import get_rasteriser

        rasteriser = get_rasteriser()
    timings: dict[str, float] = {}
    start = time.perf_counter()

    # 1. Initial mesh.
    name = init if isinstance(init, str) else "mesh"
    prior_args: dict = {}
    params = params or schedule_for(name)
    if isinstance(init, str):
        context = context or InitContext()
        if name == "sphere":
            context = InitContext(**{**context.__dict__, "sphere_radius": params.sphere_radius})
        if name == "hull" and prior is not None:
            # The hull prior's bound comes from the same carving as the hull.
            hull, bound = visual_hull_with_bound(bundle, context.hull)
            start_mesh = fit_in_box(hull)
            prior_args = {"hull": start_mesh, "bound": bound, "prior": prior}
        else:
            start_mesh = initial_mesh(init, bundle, context)
    else:
        start_mesh = fit_in_box(init)
    timings["init"] = time.perf_counter() - start

    # 2-3. Refinement and the guard.
    mark = time.perf_counter()
    mesh, kept, losses = refine(bundle, start_mesh, params, rasteriser=rasteriser,
                                progress=progress, keep_better=keep_better, timings=timings,
                                **prior_args)
    timings["refine"] = time.perf_counter() - mark

    # 4. Colours.
    mark = time.perf_counter()
    coloured = project_colours(bundle, mesh, rasteriser=rasteriser) if texture else None
    timings["texture"] = time.perf_counter() - mark

    # 5. Metrics.
    mark = time.perf_counter()
    metrics = dict(losses)
    metrics["unseen_area_fraction"] = unseen_area_fraction(bundle.spec, mesh,
                                                           rasteriser=rasteriser)
    metrics["outside_mask_area_fraction"] = outside_mask_area_fraction(decoded_views(bundle)[1],
                                                                       bundle.spec, mesh)
    metrics["mesh_faces"] = float(len(mesh.faces))
    metrics["mesh_components"] = float(len(mesh.split(only_watertight=False)))
    metrics["mesh_watertight"] = float(mesh.is_watertight)
    timings["metrics"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    return Reconstruction(mesh=mesh, coloured=coloured, init_mesh=start_mesh, kept=kept,
                          metrics=metrics, timings=timings)


__all__ = [
    "INIT_SCHEDULES",
    "hull_prior_inputs",
    "Reconstruction",
    "initial_mesh",
    "project_colours",
    "reconstruct_bundle",
    "refine",
    "schedule_for",
]
