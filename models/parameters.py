"""Which parameters each stage reads, and the one function that turns a manifest row's flat
``params`` into a typed parameter object per stage.

A manifest's ``params`` are flat scalars (so they fit a CSV cell and a ``--set`` option):

============================  ==========  ===================================================
key                           stage       dataclass
============================  ==========  ===================================================
``tile``                      bundle      :class:`models.generate.params.BundleParams`
generator fields, unprefixed  bundle      :data:`GENERATOR_PARAMS` of the row's ``generator``
init fields, unprefixed       init        :class:`models.reconstruct.init_params.InitParams`,
                                          only the fields the row's ``init`` reads
``refine_<field>``            refine      :class:`models.reconstruct.refine.RefineParams`
``texture_<field>``           texture     :class:`models.reconstruct.texture_params.
                                          TextureParams`
``export_<field>``            export      :class:`models.export.params.ExportParams`
``evaluate_<field>``          evaluate    :class:`models.evaluate.params.EvaluateParams`
============================  ==========  ===================================================

A key that no stage of the row reads does not exist: it is a :class:`ParameterError` naming the
nearest valid name, raised the same way at ``foundry3d validate``, at ``foundry3d run`` and when
an asset's stages are planned. Classes are named by ``"module:Class"`` and imported on first
use: refinement's module imports torch, which checking a manifest should not pay for unless
the manifest sets a refine parameter.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from models.param_fields import (
    ParameterError,
    Range,
    checked_params,
    field_names,
    nearest_name,
    plain_values,
    unknown_name_message,
)
from models.reconstruct.init_params import INIT_SCHEDULES, READ_BY_INIT, InitParams

__all__ = [
    "GENERATOR_PARAMS",
    "PREFIXED_STAGES",
    "STAGE_PARAMS",
    "AssetParameters",
    "ParameterError",
    "ParamsEntry",
    "check_manifest_params",
    "check_parameter",
    "keeps_geometry",
    "parameter_class",
    "parse_stage_params",
]


@dataclass(frozen=True)
class ParamsEntry:
    """How one stage's (or generator's) parameters are built from its share of the manifest."""

    cls: str
    """The dataclass, as ``"module:Class"``."""
    what: str
    """Its name in messages: ``unknown <what> parameter 'x'``."""
    ranges: Mapping[str, Range] | None = None
    """Field -> accepted range; ``None``: the class checks itself (its ``from_mapping``)."""
    fixed: Mapping[str, str] = field(default_factory=dict)
    """Fields a manifest may not set -> why (supplied by the pipeline, or read by no stage)."""
    check: str | None = None
    """``"module:function"`` run on the built object for checks across fields; it raises a
    ``ValueError`` naming the bad value."""


REFINE_RANGES: dict[str, Range] = {
    "coarse_edge": Range(0.005, 0.5),
    "fine_edge": Range(0.005, 0.5),
    "fine_faces": Range(0, 100000),
    "coarse_thickness": Range(0.0, 100.0),
    "coarse_steps": Range(0, 5000),
    "fine_steps": Range(0, 5000),
    "explicit_steps": Range(0, 5000),
    "coarse_resolution": Range(16, 2048),
    "resolution": Range(16, 2048),
    "lr": Range(1e-4, 10.0),
    "fine_lr": Range(1e-4, 10.0),
    "smooth_lambda": Range(0.0, 100.0),
    "normal_weight": Range(0.0, 1000.0),
    "mask_weight": Range(0.0, 1000.0),
    "fine_mask_weight": Range(0.0, 1000.0),
    "box_weight": Range(0.0, 1000.0),
    "depth_weight": Range(0.0, 1000.0),
    "fine_depth_weight": Range(0.0, 1000.0),
    "depth_scale": Range(1e-4, 1.0),
    "hidden_relax": Range(0, 100),
    "laplacian_weight": Range(0.0, 1000.0),
    "remesh_interval": Range(1, 1000),
    "settled_remesh_interval": Range(0, 1000),
    "fine_ramp": Range(0.0, 1.0),
    "torch_threads": Range(1, 256),
    "plateau_steps": Range(0, 5000),
    "plateau_tolerance": Range(0.0, 1.0),
    "diverged_ratio": Range(0.0, 100.0),
}
"""Accepted values of :class:`models.reconstruct.refine.RefineParams` (steps 0..5000; render
resolutions up to 2048: four 2048^2 views with gradients are the most a worker's memory holds)."""

KISS3DGEN_RANGES: dict[str, Range] = {
    "steps": Range(1, 1000),
    "guidance": Range(0.0, 100.0),
    "lora_scale": Range(0.0, 4.0),
    "height": Range(64, 2048),
    "width": Range(128, 4096),
    "max_sequence_length": Range(1, 512),
    "batch_size": Range(1, 64),
    "min_island_fraction": Range(0.0, 0.99),
}
"""Accepted values of :class:`models.generate.kiss3dgen.params.Kiss3DGenParams` (a bundle taller
than 2048 pixels is 32k Flux tokens a side: no GPU holds its attention)."""

CONDITIONED_RANGES: dict[str, Range] = {
    **KISS3DGEN_RANGES,
    "strength": Range(0.01, 1.0),
    "controlnet_conditioning_scale": Range(0.0, 10.0),
    "control_guidance_start": Range(0.0, 1.0),
    "control_guidance_end": Range(0.0, 1.0),
    "tile_down_scale": Range(1, 64),
    "caption_max_tokens": Range(1, 512),
}
"""Accepted values of the reference-conditioned generators (``kiss3dgen-mesh``): Kiss3DGen's
plus img2img strength, the ControlNet's weight and share of the steps, and the caption's
length."""

IMAGE_TO_BUNDLE_RANGES: dict[str, Range] = {
    **CONDITIONED_RANGES,
    "redux_prompt_embeds_scale": Range(0.0, 10.0),
    "redux_pooled_prompt_embeds_scale": Range(0.0, 10.0),
    "object_fraction": Range(0.05, 1.0),
    "reference_size": Range(32, 2048),
    "zero123_steps": Range(1, 1000),
    "zero123_guidance": Range(0.0, 100.0),
}
"""Accepted values of ``kiss3dgen-image``: the conditioned ranges plus Redux's scales and the
centred picture's framing (Redux sees 384-pixel crops; 2048 is ample)."""

STAGE_PARAMS: dict[str, ParamsEntry] = {
    "bundle": ParamsEntry("models.generate.params:BundleParams", "bundle"),
    "init": ParamsEntry("models.reconstruct.init_params:InitParams", "init"),
    "refine": ParamsEntry(
        "models.reconstruct.refine:RefineParams",
        "refine",
        ranges=REFINE_RANGES,
        fixed={
            "seed": "it is the asset's seed",
            "device": "the worker's device comes from FOUNDRY_DEVICE",
            "sphere_radius": "the init stage makes the starting mesh: use 'sphere_radius'",
        },
    ),
    "texture": ParamsEntry("models.reconstruct.texture_params:TextureParams", "texture"),
    "export": ParamsEntry("models.export.params:ExportParams", "export"),
    "evaluate": ParamsEntry("models.evaluate.params:EvaluateParams", "evaluate"),
}
"""Stage name -> its parameters (``publish`` has none)."""

GENERATOR_PARAMS: dict[str, ParamsEntry | None] = {
    "kiss3dgen": ParamsEntry(
        "models.generate.kiss3dgen.params:Kiss3DGenParams",
        "kiss3dgen",
        ranges=KISS3DGEN_RANGES,
        check="models.generate.kiss3dgen.params:check_inputs",
    ),
    "library": ParamsEntry("models.generate.params:LibraryParams", "library"),
    "file": None,
    "kiss3dgen-mesh": ParamsEntry(
        "models.generate.kiss3dgen.mesh_to_3d:MeshToBundleParams",
        "kiss3dgen-mesh",
        ranges=CONDITIONED_RANGES,
        check="models.parameters:check_generator_params",
    ),
    "kiss3dgen-image": ParamsEntry(
        "models.generate.kiss3dgen.image_to_3d:ImageToBundleParams",
        "kiss3dgen-image",
        ranges=IMAGE_TO_BUNDLE_RANGES,
        check="models.parameters:check_generator_params",
    ),
}
"""Generator name -> its parameters; ``None`` (or a generator not listed) takes none."""

KISS3DGEN_FAMILY = frozenset({"kiss3dgen", "kiss3dgen-mesh", "kiss3dgen-image"})
"""Generators drawing with Flux + the Kiss3DGen LoRA: their bundle size follows the tile."""

NO_REFINEMENT = {"coarse_steps": 0, "fine_steps": 0, "explicit_steps": 0}
"""Refinement of an asset that keeps its input geometry (``kiss3dgen-mesh`` ``retexture``): no
steps, so the refine stage hands the input mesh on and only colours are projected."""

PREFIXED_STAGES = ("refine", "texture", "export", "evaluate")
"""Stages whose manifest keys are ``<stage>_<field>``."""

TILE_IGNORED_BY = frozenset({"file"})
"""Generators that take the bundle as it is: ``tile`` is accepted (a manifest's defaults may set
it for every row) but not read, so it is not part of their bundle stage's hash."""


@cache
def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def check_generator_params(params: Any) -> None:
    """The generator parameter object's own checks across fields (its ``check`` method)."""
    params.check()


def keeps_geometry(generator: str, generator_params: Any) -> bool:
    """Whether an asset keeps its input mesh's geometry (``kiss3dgen-mesh`` in ``retexture``
    mode): its init is the input mesh and its refinement takes no steps."""
    return generator == "kiss3dgen-mesh" and getattr(generator_params, "mode", None) == "retexture"


def _check_kept_geometry(init: str, refine_given: Mapping[str, Any]) -> None:
    """Raise unless a retexture row starts from its input mesh and leaves refinement off."""
    if init != "mesh":
        raise ParameterError(
            f"mode 'retexture' keeps the input geometry: init must be 'mesh', got {init!r}"
        )
    for name in NO_REFINEMENT:
        if name in refine_given:
            raise ParameterError(
                f"parameter 'refine_{name}' cannot be set with mode 'retexture': the input "
                "geometry is kept, refinement takes no steps"
            )


def parameter_class(stage: str) -> type:
    """The parameter dataclass of ``stage`` (``KeyError`` for a stage without parameters)."""
    return _resolve(STAGE_PARAMS[stage].cls)


def _build(entry: ParamsEntry, data: Mapping[str, Any], defaults: Mapping[str, Any]) -> Any:
    """The typed object of ``entry`` from the manifest's ``data`` over ``defaults``."""
    cls = _resolve(entry.cls)
    for key in data:
        if key in entry.fixed:
            raise ParameterError(
                f"{entry.what} parameter {key!r} cannot be set in a manifest: {entry.fixed[key]}"
            )
    if entry.ranges is None:
        return cls.from_mapping(data, **defaults)
    settable = [name for name in field_names(cls) if name not in entry.fixed]
    params = checked_params(
        cls, data, what=entry.what, ranges=entry.ranges, settable=settable, defaults=defaults
    )
    if entry.check is not None:
        try:
            _resolve(entry.check)(params)
        except ValueError as exc:
            raise ParameterError(f"{entry.what} parameters: {exc}") from None
    return params


@dataclass(frozen=True)
class AssetParameters:
    """The typed parameters of every stage of one asset, and what each stage reads of them."""

    generator_name: str
    """The row's generator (``library``, ``kiss3dgen``, ``file``, ...)."""
    init_name: str
    """The row's init backend (``sphere``, ``library``, ``lrm``, ...)."""
    bundle: Any
    """:class:`models.generate.params.BundleParams`."""
    generator: Any | None
    """The generator's own parameter object, ``None`` for a generator that takes none."""
    generator_given: dict[str, Any]
    """The generator keys the manifest set (checked, as written): what the generator's request
    carries, since the generator applies its own defaults beneath them (weights paths from
    settings, a size from the tile)."""
    init: InitParams
    """The init parameters; the stage reads only its backend's fields (``READ_BY_INIT``)."""
    refine: Any
    """:class:`models.reconstruct.refine.RefineParams` (``seed`` is the asset's)."""
    texture: Any
    """:class:`models.reconstruct.texture_params.TextureParams`."""
    export: Any
    """:class:`models.export.params.ExportParams`."""
    evaluate: Any
    """:class:`models.evaluate.params.EvaluateParams`."""

    def read_by(self, stage: str) -> dict[str, Any]:
        """The parameters ``stage`` reads, as JSON-ready plain values (what its hash covers)."""
        if stage == "bundle":
            generator = plain_values(self.generator) if self.generator is not None else {}
            bundle = {} if self.generator_name in TILE_IGNORED_BY else plain_values(self.bundle)
            return {**bundle, "generator_params": generator}
        if stage == "init":
            values = plain_values(self.init)
            return {name: values[name] for name in READ_BY_INIT.get(self.init_name, ())}
        if stage in PREFIXED_STAGES:
            return plain_values(getattr(self, stage))
        return {}


def parse_stage_params(
    params: Mapping[str, Any] | None,
    *,
    generator: str,
    init: str,
    defaults: Mapping[str, Any] | None = None,
) -> AssetParameters:
    """Typed parameters per stage from a manifest row's flat ``params``.

    ``generator`` / ``init``: the row's backends (they decide which unprefixed keys exist).
    ``defaults``: flat keys supplied by the pipeline, beneath the manifest's values (``tile``
    and ``lrm_path`` from settings, ``refine_seed`` from the asset); ``None`` values are
    ignored, and a default may set a field the manifest may not. Raises
    :class:`ParameterError` with a one-line message on the first bad key or value.
    """
    given = _split(params or {}, generator, init, strict=True)
    base = _split({k: v for k, v in (defaults or {}).items() if v is not None}, generator, init,
                  strict=False)
    bundle = _build(STAGE_PARAMS["bundle"], given["bundle"], base["bundle"])
    entry = GENERATOR_PARAMS.get(generator)
    generator_params = None
    if entry is not None:
        generator_params = _build(
            entry, given["generator"], {**_generator_defaults(generator, bundle.tile),
                                        **base["generator"]}
        )
    # Each init has its refinement schedule (a visual hull needs fewer steps than a sphere);
    # it sits beneath what the manifest and the pipeline set, and enters the refine hash.
    base["refine"] = {**INIT_SCHEDULES.get(init, INIT_SCHEDULES["mesh"]), **base["refine"]}
    if keeps_geometry(generator, generator_params):
        _check_kept_geometry(init, given["refine"])
        base["refine"] = {**base["refine"], **NO_REFINEMENT}
    built = {
        stage: _build(STAGE_PARAMS[stage], given[stage], base[stage])
        for stage in ("init", *PREFIXED_STAGES)
    }
    return AssetParameters(
        generator_name=generator,
        init_name=init,
        bundle=bundle,
        generator=generator_params,
        generator_given=dict(given["generator"]),
        **built,
    )


def check_manifest_params(params: Mapping[str, Any] | None, *, generator: str, init: str) -> None:
    """Raise :class:`ParameterError` if any of a manifest row's ``params`` is unknown to the
    stages of its ``generator`` and ``init``, has the wrong type, or is out of range."""
    parse_stage_params(params, generator=generator, init=init)


def check_parameter(key: str, value: Any) -> None:
    """Raise :class:`ParameterError` unless ``key`` is a parameter of some stage (for some
    generator or init) and ``value`` fits it: the check of a ``retry --set`` before any asset
    is looked at."""
    prefix, _, rest = key.partition("_")
    if prefix in PREFIXED_STAGES and rest:
        _build(STAGE_PARAMS[prefix], {rest: value}, {})
        return
    if key == "tile":
        _build(STAGE_PARAMS["bundle"], {key: value}, {})
        return
    if key in field_names(InitParams):
        _build(STAGE_PARAMS["init"], {key: value}, {})
        return
    for name, entry in GENERATOR_PARAMS.items():
        if entry is not None and key in field_names(_resolve(entry.cls)):
            _build(entry, {key: value}, _generator_defaults(name, 512))
            return
    candidates = {"tile", *field_names(InitParams)}
    for entry in GENERATOR_PARAMS.values():
        if entry is not None:
            candidates |= set(field_names(_resolve(entry.cls)))
    for stage in PREFIXED_STAGES:
        fixed = STAGE_PARAMS[stage].fixed
        names = field_names(parameter_class(stage))
        candidates |= {f"{stage}_{name}" for name in names if name not in fixed}
    best = nearest_name(key, candidates)
    raise ParameterError(f"unknown parameter {key!r} (did you mean {best!r}?)")


def _generator_defaults(generator: str, tile: int) -> dict[str, Any]:
    """A generator's size defaults that follow the bundle's tile."""
    if generator in KISS3DGEN_FAMILY:
        return {"height": 2 * tile, "width": 4 * tile}
    return {}


def _split(
    params: Mapping[str, Any], generator: str, init: str, *, strict: bool
) -> dict[str, dict[str, Any]]:
    """Flat keys -> ``{"bundle": {...}, "generator": {...}, "init": {...}, "refine": {...}}``.

    ``strict``: a key must be read by a stage of this row (manifest values); defaults may name
    fields the row's backends ignore.
    """
    groups: dict[str, dict[str, Any]] = {
        name: {} for name in ("bundle", "generator", "init", *PREFIXED_STAGES)
    }
    init_fields = set(field_names(InitParams))
    for key, value in params.items():
        prefix, _, rest = key.partition("_")
        if key == "tile":
            groups["bundle"][key] = value
        elif prefix in PREFIXED_STAGES and rest:
            groups[prefix][rest] = value
        elif key in init_fields:
            if strict and key not in READ_BY_INIT.get(init, ()):
                readers = [name for name, read in READ_BY_INIT.items() if key in read]
                raise ParameterError(
                    f"parameter {key!r} is read by init {' / '.join(map(repr, readers))} only; "
                    f"this row uses init {init!r}"
                )
            groups["init"][key] = value
        else:
            if strict:
                _check_generator_key(key, generator, init)
            groups["generator"][key] = value
    return groups


def _check_generator_key(key: str, generator: str, init: str) -> None:
    """Raise for an unprefixed key the row's generator does not read, naming the nearest key."""
    entry = GENERATOR_PARAMS.get(generator)
    own = set(field_names(_resolve(entry.cls))) if entry is not None else set()
    if key in own:
        return
    for other, other_entry in GENERATOR_PARAMS.items():
        if other != generator and other_entry is not None:
            if key in field_names(_resolve(other_entry.cls)):
                raise ParameterError(
                    f"parameter {key!r} is read by generator {other!r} only; this row uses "
                    f"generator {generator!r}"
                )
    candidates = own | {"tile"} | set(READ_BY_INIT.get(init, ()))
    for stage in PREFIXED_STAGES:
        cls = parameter_class(stage)
        fixed = STAGE_PARAMS[stage].fixed
        candidates |= {f"{stage}_{name}" for name in field_names(cls) if name not in fixed}
    best = nearest_name(key, candidates)
    if best is None:
        raise ParameterError(unknown_name_message(generator, key, ()))
    raise ParameterError(f"unknown {generator} parameter {key!r} (did you mean {best!r}?)")
