"""Stage II initial meshes, chosen by name: where refinement starts from.

``hull``    the visual hull of the bundle's masks (the default: holes any view shows are open).
``sphere``  an icosphere of ``InitContext.sphere_radius`` centred at the origin.
``library`` the mesh the library generator retrieved, placed in the bundle frame.
``lrm``     the coarse mesh predicted by the LRM from the bundle's colour views.
``mesh``    the request's own input mesh (``kiss3dgen-mesh``), placed in the bundle frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from models.bundle.spec import Bundle
from models.reconstruct.hull import HullParams, visual_hull


class InitInputError(ValueError):
    """The initialiser cannot run for this bundle (permanent)."""

    retryable = False


@dataclass(frozen=True)
class InitContext:
    """Plain values initialisers may need."""

    library_path: Path | None = None
    lrm_path: str | None = None
    lrm_variant: str = "prm"
    device: str = "cpu"
    sphere_radius: float = 0.85
    """Radius of the ``sphere`` init (bundle-frame units)."""
    hull: HullParams = field(default_factory=HullParams)
    """Settings of the ``hull`` init."""
    mesh_path: Path | None = None
    """The input mesh of a ``mesh`` request (source frame), for init ``mesh``."""


def init_sphere(bundle: Bundle, context: InitContext) -> trimesh.Trimesh:
    """An icosphere of ``context.sphere_radius`` at the origin (bundle frame)."""
    from models.reconstruct.refine import sphere_init

    return sphere_init(context.sphere_radius, subdivisions=3)


def init_hull(bundle: Bundle, context: InitContext) -> trimesh.Trimesh:
    """The visual hull of the bundle's 4 masks (:mod:`models.reconstruct.hull`)."""
    return visual_hull(bundle, context.hull)


def init_from_library(bundle: Bundle, context: InitContext) -> trimesh.Trimesh:
    """The retrieved library mesh, moved into the bundle frame with the sidecar's scale/offset."""
    from models.geometry.frames import to_bundle_frame
    from models.geometry.mesh import load_mesh

    source = bundle.spec.extra.get("library_mesh")
    if not source:
        raise InitInputError(
            "init 'library' needs a bundle made by the library generator (no library_mesh in "
            "its sidecar); use init 'sphere' or 'lrm' for other generators"
        )
    path = Path(source)
    if not path.is_absolute() and context.library_path is not None:
        path = context.library_path / path
    if not path.exists():
        raise InitInputError(f"library mesh {path} named by the bundle sidecar does not exist")
    return to_bundle_frame(load_mesh(path), bundle.spec, bundle.spec.extra.get("source_up", "y"))


def init_from_lrm(bundle: Bundle, context: InitContext) -> trimesh.Trimesh:
    from models.reconstruct.lrm.reconstruct import lrm_init

    if not context.lrm_path:
        raise InitInputError(
            "init 'lrm' needs an LRM checkpoint: set FOUNDRY_LRM_PATH or params.lrm_path"
        )
    return lrm_init(bundle, context.lrm_path, variant=context.lrm_variant, device=context.device)


def init_from_input_mesh(bundle: Bundle, context: InitContext) -> trimesh.Trimesh:
    """The request's input mesh, moved into the bundle frame with the sidecar's ``scale``,
    ``offset`` and ``source_up`` (those of the render ``kiss3dgen-mesh`` re-drew): enhance and
    edit refine it, a retexture keeps it as it is."""
    from models.geometry.frames import to_bundle_frame
    from models.geometry.mesh import load_mesh

    if context.mesh_path is None:
        raise InitInputError("init 'mesh' needs a 'mesh' request (an input mesh)")
    if "source_up" not in bundle.spec.extra:
        raise InitInputError(
            "init 'mesh' needs a bundle made from the input mesh by kiss3dgen-mesh (no "
            "source_up in its sidecar)"
        )
    return to_bundle_frame(load_mesh(context.mesh_path), bundle.spec,
                           bundle.spec.extra["source_up"])


INITIALISERS: dict[str, Callable[[Bundle, InitContext], trimesh.Trimesh]] = {
    "hull": init_hull,
    "sphere": init_sphere,
    "library": init_from_library,
    "lrm": init_from_lrm,
    "mesh": init_from_input_mesh,
}


#: Refinement works inside [-1, 1]^3; an initial mesh is shrunk to fit within this extent.
INIT_BOX_LIMIT = 0.95


def fit_in_box(mesh: trimesh.Trimesh, limit: float = INIT_BOX_LIMIT) -> trimesh.Trimesh:
    """A copy of ``mesh`` scaled about the origin so it lies within ``[-limit, limit]^3``.

    Only ever shrinks: a learned initialiser (LRM) may overshoot the normalised box slightly,
    and refinement must start inside it.
    """
    reach = float(np.abs(np.asarray(mesh.vertices)).max()) if len(mesh.vertices) else 0.0
    out = mesh.copy()
    if reach > limit:
        out.vertices = np.asarray(mesh.vertices) * (limit / reach)
    return out


def initial_mesh(
    name: str, bundle: Bundle, context: InitContext | None = None
) -> trimesh.Trimesh:
    """Run the initialiser called ``name``; a mesh in the bundle frame fitted into the unit box.

    Always a real mesh (``sphere`` included). Raises :class:`InitInputError` for an unknown
    name or an initialiser that cannot run for this bundle.
    """
    context = context or InitContext()
    try:
        fn = INITIALISERS[name]
    except KeyError:
        from difflib import get_close_matches

        near = get_close_matches(name, INITIALISERS, n=1)
        hint = f"did you mean {near[0]!r}?" if near else "known: " + ", ".join(sorted(INITIALISERS))
        raise InitInputError(f"unknown init {name!r}; {hint}") from None
    return fit_in_box(fn(bundle, context))
