"""The one transform between a source mesh's frame and the bundle frame.

A bundle's sidecar records how its source was normalised (BUNDLE_SPEC.md):
``bundle_xyz = (source_xyz_yup - offset) * scale``, where ``source_xyz_yup`` is the source turned
y-up (:func:`models.geometry.mesh.to_y_up`). Every caller that moves a mesh into or out of the
bundle frame (the CLI, the benchmark, the stage tasks, the library initialiser) uses these two
functions, so the convention lives in one place.
"""

from __future__ import annotations

import numpy as np
import trimesh

from models.bundle.spec import BundleSpec
from models.geometry.mesh import to_y_up


def to_bundle_frame(mesh: trimesh.Trimesh, spec: BundleSpec, up: str = "y") -> trimesh.Trimesh:
    """A copy of source-frame ``mesh`` (``up`` axis ``"y"`` or ``"z"``) in ``spec``'s bundle frame.

    Vertices ``(V, 3)`` float64, bundle frame, +Y up, front +Z, units of the bundle (the
    normalised object spans 1.8 along its longest side).
    """
    out = to_y_up(mesh, up)
    offset = np.asarray(spec.offset, dtype=np.float64)[None, :]
    out.vertices = (np.asarray(out.vertices, dtype=np.float64) - offset) * spec.scale
    return out


def to_source_frame(mesh: trimesh.Trimesh, spec: BundleSpec) -> trimesh.Trimesh:
    """A copy of bundle-frame ``mesh`` mapped back to the source's y-up frame (source units).

    The inverse of :func:`to_bundle_frame` for ``up="y"``: ``source = bundle / scale + offset``.
    """
    out = mesh.copy()
    offset = np.asarray(spec.offset, dtype=np.float64)[None, :]
    out.vertices = np.asarray(mesh.vertices, dtype=np.float64) / spec.scale + offset
    return out
