"""Stage II initial meshes, chosen by name: where refinement starts from.

``sphere``  refinement's own icosphere (returns None: refine_mesh starts from a sphere).
``library`` the mesh the library generator retrieved, placed in the bundle frame.
``lrm``     the coarse mesh predicted by the LRM from the bundle's colour views.
``mesh``    the request's own input mesh (``kiss3dgen-mesh``), placed in the bundle frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from models.bundle.spec import Bundle


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
    mesh_path: Path | None = None
    """The input mesh of a ``mesh`` request (source frame), for init ``mesh``."""


def init_sphere(bundle: Bundle, context: InitContext) -> trimesh.Trimesh | None:
    return None


def init_from_library(bundle: Bundle, context: InitContext) -> trimesh.Trimesh:
    """The retrieved library mesh, moved into the bundle frame with the sidecar's scale/offset."""
    from models.geometry.mesh import load_mesh, to_y_up

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
    mesh = to_y_up(load_mesh(path), bundle.spec.extra.get("source_up", "y"))
    offset = np.asarray(bundle.spec.offset, dtype=np.float64)
    mesh.vertices = (np.asarray(mesh.vertices) - offset) * bundle.spec.scale
    return mesh


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
    from models.geometry.mesh import load_mesh, to_y_up

    if context.mesh_path is None:
        raise InitInputError("init 'mesh' needs a 'mesh' request (an input mesh)")
    if "source_up" not in bundle.spec.extra:
        raise InitInputError(
            "init 'mesh' needs a bundle made from the input mesh by kiss3dgen-mesh (no "
            "source_up in its sidecar)"
        )
    mesh = to_y_up(load_mesh(context.mesh_path), bundle.spec.extra["source_up"])
    offset = np.asarray(bundle.spec.offset, dtype=np.float64)
    mesh.vertices = (np.asarray(mesh.vertices) - offset) * bundle.spec.scale
    return mesh


INITIALISERS: dict[str, Callable[[Bundle, InitContext], trimesh.Trimesh | None]] = {
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


def initial_mesh(name: str, bundle: Bundle, context: InitContext) -> trimesh.Trimesh | None:
    """Run the initialiser called ``name``, fitted into the unit box; None means "a sphere"."""
    try:
        fn = INITIALISERS[name]
    except KeyError:
        known = ", ".join(sorted(INITIALISERS))
        raise InitInputError(f"unknown init {name!r}; known: {known}") from None
    mesh = fn(bundle, context)
    return None if mesh is None else fit_in_box(mesh)
