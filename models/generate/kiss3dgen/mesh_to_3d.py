"""3D-to-3D with Kiss3DGen (generator ``kiss3dgen-mesh``): enhance, edit or retexture a mesh.

The input mesh is rendered to a bundle with Kiss3DGen's cameras (distance 4.2); Flux + LoRA
re-draws that bundle from it (img2img at ``strength``) with the ControlNet-Union in tile mode on
it, prompted by the request's text: a caption of the object to *enhance* it, the wanted change
to *edit* it, the new look to *retexture* it. Kiss3DGen's 3D-to-3D settings are the defaults
(strength 0.95, ControlNet weight 0.1 over the first 20 % of the steps).

``retexture`` keeps the input geometry: the bundle's sidecar says ``keep_geometry: true`` and
names the input mesh (``init_mesh``, ``init_up``), so Stage II starts from that mesh instead of
reconstructing one and only projects the new colours; :func:`init_mesh_from_sidecar` reads it
back. The sidecar's ``scale`` and ``offset`` are the reference render's, so the input mesh maps
into the bundle frame exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from models.bundle.spec import Bundle, BundleSpec
from models.generate.kiss3dgen.conditioned import (
    ConditionedParams,
    check_conditioned_weights,
    generate_conditioned,
    params_for_request,
)
from models.generate.kiss3dgen.params import KISS3DGEN_DISTANCE, Kiss3DGenParamsError

if TYPE_CHECKING:
    from models.generate.kiss3dgen.generate import GeneratedBundle

#: What the generator does with the input mesh.
MESH_MODES = ("enhance", "edit", "retexture")
UP_AXES = ("y", "z")


@dataclass(frozen=True)
class MeshToBundleParams(ConditionedParams):
    """Params of ``kiss3dgen-mesh``; every field is a manifest ``params`` key."""

    mode: str = "enhance"
    """``enhance`` (prompt: a caption of the object), ``edit`` (prompt: the edited object) or
    ``retexture`` (prompt: the new appearance; the input geometry is kept)."""
    mesh_up: str = "y"
    """Axis of the input mesh file that points up (``y`` or ``z``)."""
    controlnet_conditioning_scale: float = 0.1
    """Weight of the ControlNet residuals (Kiss3DGen's 3D-to-3D: 0.1)."""
    control_guidance_end: float = 0.2
    """Share of the steps the ControlNet acts on (Kiss3DGen's 3D-to-3D: 0.2)."""

    @classmethod
    def generator_name(cls) -> str:
        return "kiss3dgen-mesh"

    def check(self) -> None:
        super().check()
        if self.mode not in MESH_MODES:
            raise Kiss3DGenParamsError(f"mode must be one of {MESH_MODES}, got {self.mode!r}")
        if self.mesh_up not in UP_AXES:
            raise Kiss3DGenParamsError(f"mesh_up must be one of {UP_AXES}, got {self.mesh_up!r}")


@dataclass
class MeshToBundle:
    """What :func:`mesh_to_bundle` made.

    ``generated``: the new bundle (:class:`models.generate.kiss3dgen.generate.GeneratedBundle`).
    ``reference``: the input mesh's rendered bundle. ``init_mesh``: for ``retexture``, the input
    mesh as loaded (source frame, unchanged), else ``None``.
    """

    generated: GeneratedBundle
    reference: Bundle
    init_mesh: trimesh.Trimesh | None = None

    @property
    def keep_geometry(self) -> bool:
        """True when Stage II must keep the input mesh (``retexture``)."""
        return self.init_mesh is not None


def reference_bundle(mesh: trimesh.Trimesh, tile: int, up: str = "y") -> Bundle:
    """The bundle of ``mesh`` (source frame, ``up`` axis) with Kiss3DGen's cameras at ``tile``."""
    from models.render.views import render_bundle

    return render_bundle(mesh, spec=BundleSpec(tile=tile, distance=KISS3DGEN_DISTANCE), up=up)


def needs_caption(prompt: str | None, params: MeshToBundleParams) -> bool:
    """True when the prompt must come from the captioning model: an ``enhance`` without a
    prompt of its own. Raises ``ValueError`` for an edit or retexture without a prompt."""
    if prompt is not None and prompt.strip():
        return False
    if params.mode != "enhance":
        raise ValueError(f"kiss3dgen-mesh ({params.mode}) needs a text prompt: the change to "
                         "edit, the new look to retexture")
    return True


def check_mesh_weights(params: MeshToBundleParams, caption: bool) -> None:
    """Raise one ``WeightsMissingError`` naming every missing path of this generation: Flux,
    LoRA, ControlNet when used, and the captioning model when ``caption``."""
    from models.generate.kiss3dgen.caption import check_caption_folder
    from models.generate.kiss3dgen.weights import WeightsMissingError

    checks = [lambda: check_conditioned_weights(params)]
    if caption:
        checks.append(lambda: check_caption_folder(params.caption_path))
    WeightsMissingError.check_all(checks)


def caption_reference(reference: Bundle, params: MeshToBundleParams) -> str:
    """The captioning model's caption of ``reference``'s front colour view; raises
    :class:`models.generate.kiss3dgen.caption.EmptyCaptionError` when it has no words."""
    from models.generate.kiss3dgen.caption import caption_with_params, front_view

    return caption_with_params(front_view(reference.image, reference.spec.tile), params,
                               "the mesh's render")


def mesh_to_bundle(
    mesh_path: str | Path, prompt: str | None, seed: int, params: MeshToBundleParams
) -> MeshToBundle:
    """Enhance / edit / retexture the mesh at ``mesh_path`` as ``params.mode`` says.

    ``prompt`` may be ``None`` (or blank) for ``enhance`` only: the captioning model at
    ``params.caption_path`` then captions the reference render's front view; a given prompt
    is always used as is. Weights are checked first (one error naming every missing path),
    then the mesh is read (:class:`models.geometry.mesh.MeshLoadError` if it cannot be) and
    rendered at the params' tile. The new bundle's sidecar keeps the reference render's
    ``scale``/``offset`` and adds ``mode``, ``strength``, ``controlnet_conditioning_scale``,
    ``source_mesh``, ``caption`` and ``caption_source`` (``prompt`` or ``model``), and for
    ``retexture`` ``keep_geometry``, ``init_mesh``, ``init_up``.
    """
    from models.geometry.mesh import load_mesh

    params.check()
    caption = needs_caption(prompt, params)
    check_mesh_weights(params, caption)
    mesh_path = Path(mesh_path).expanduser().resolve()
    mesh = load_mesh(mesh_path)
    reference = reference_bundle(mesh, params.tile, params.mesh_up)
    if caption:
        prompt = caption_reference(reference, params)
    generated = generate_conditioned(prompt, seed, params, reference.image)

    extra = dict(generated.bundle.spec.extra)
    extra.update(
        mode=params.mode,
        strength=params.strength,
        controlnet_conditioning_scale=(
            params.controlnet_conditioning_scale if params.use_controlnet else None
        ),
        source_mesh=str(mesh_path),
        source_up=params.mesh_up,
        caption=prompt,
        caption_source="model" if caption else "prompt",
    )
    keep = params.mode == "retexture"
    if keep:
        extra.update(keep_geometry=True, init_mesh=str(mesh_path), init_up=params.mesh_up)
    generated.bundle.spec = replace(
        reference.spec, producer=generated.bundle.spec.producer, extra=extra
    )
    return MeshToBundle(generated=generated, reference=reference,
                        init_mesh=mesh if keep else None)


def init_mesh_from_sidecar(bundle: Bundle, bundle_frame: bool = False) -> trimesh.Trimesh | None:
    """The mesh Stage II must keep for a ``retexture`` bundle, or ``None`` for other bundles.

    Read from the sidecar's ``init_mesh`` in its source frame, unchanged; with
    ``bundle_frame`` it is turned y-up and mapped by the sidecar's scale and offset
    (``bundle_xyz = (source_yup - offset) * scale``), where the bundle's views see it.
    """
    from models.geometry.mesh import load_mesh, to_y_up

    extra = bundle.spec.extra
    if not extra.get("keep_geometry") or not extra.get("init_mesh"):
        return None
    mesh = load_mesh(extra["init_mesh"])
    if not bundle_frame:
        return mesh
    out = to_y_up(mesh, extra.get("init_up", "y"))
    offset = np.asarray(bundle.spec.offset, dtype=np.float64)
    out.vertices = (np.asarray(out.vertices, dtype=np.float64) - offset) * bundle.spec.scale
    return out


def generate_from_mesh(request, context):
    """The ``kiss3dgen-mesh`` entry of :data:`models.generate.registry.GENERATORS`.

    Needs ``request.mesh_path``, and ``request.prompt`` unless an enhance is captioned; params
    from ``request.params`` (:class:`MeshToBundleParams`). Returns
    :class:`models.generate.base.Generated` with metrics ``kiss3dgen_seconds``,
    ``foreground_fraction`` and ``match`` recording the input mesh, whether its geometry is
    kept, and the caption used with its source.
    """
    from models.generate.base import Generated, GeneratorInputError
    from models.generate.kiss3dgen.caption import EmptyCaptionError
    from models.geometry.mesh import MeshLoadError

    params = params_for_request(MeshToBundleParams, request, context)
    if request.mesh_path is None:
        raise GeneratorInputError("the kiss3dgen-mesh generator needs `mesh: PATH` (an input mesh)")
    try:
        caption = needs_caption(request.prompt, params)
    except ValueError as exc:
        raise GeneratorInputError(f"the {exc}") from None
    if not Path(request.mesh_path).expanduser().is_file():
        check_mesh_weights(params, caption)  # name missing weights first, the bigger fix
        raise GeneratorInputError(f"input mesh not found: {request.mesh_path}")
    try:
        out = mesh_to_bundle(request.mesh_path, request.prompt, request.seed, params)
    except (MeshLoadError, EmptyCaptionError) as exc:
        raise GeneratorInputError(str(exc)) from exc
    g = out.generated
    return Generated(
        bundle=g.bundle,
        metrics={
            "kiss3dgen_seconds": round(g.seconds, 4),
            "foreground_fraction": round(float(g.masks.mean()), 6),
        },
        match={
            "by": "mesh",
            "path": str(Path(request.mesh_path).expanduser().resolve()),
            "mode": params.mode,
            "keep_geometry": out.keep_geometry,
            "caption": g.bundle.spec.extra.get("caption"),
            "caption_source": g.bundle.spec.extra.get("caption_source"),
        },
    )
