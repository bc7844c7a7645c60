"""The ``lrm`` init backend: a bundle's four colour views -> coarse mesh in the bundle frame.

One call: cameras and views from the bundle (:mod:`models.reconstruct.lrm.cameras`), triplanes from
the
network, FlexiCubes surface in the model frame, then back to the bundle frame (+Y up) at the
bundle's scale. Models are cached per process, keyed by checkpoint path, modification time,
variant and device, so a worker loads a checkpoint once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh

from models.bundle.spec import Bundle
from models.cache import ModelKey, clear, get_or_load
from models.reconstruct.lrm.cameras import model_inputs, model_to_bundle
from models.reconstruct.lrm.config import LRMConfig, get_config
from models.reconstruct.lrm.model import LRM, load_checkpoint, save_checkpoint

__all__ = ["lrm_init", "load_cached", "clear_cache", "save_checkpoint"]

#: Kind of the LRM models in :mod:`models.cache`.
CACHE_KIND = "lrm"


def load_cached(checkpoint: str | Path, variant: str | LRMConfig, device: str) -> LRM:
    """The model for ``checkpoint`` on ``device``, loaded once per process (eval mode).

    Keyed by resolved path, variant config and device; a rewritten file (another mtime)
    replaces the stale model.
    """
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"LRM checkpoint not found: {path}")
    config = get_config(variant)
    key = ModelKey(CACHE_KIND, (str(path), repr(config), str(device)), (path.stat().st_mtime_ns,))
    return get_or_load(key, lambda: load_checkpoint(path, config).to(device).eval())


def clear_cache() -> None:
    """Forget every cached model (frees their memory once no one else holds them)."""
    clear(CACHE_KIND)


@torch.no_grad()
def lrm_init(
    bundle: Bundle,
    checkpoint: str | Path,
    *,
    variant: str | LRMConfig = "prm",
    device: str = "cpu",
    grid_res: int | None = None,
    extractor: str = "flexicubes",
) -> trimesh.Trimesh:
    """Coarse mesh of a bundle's object, predicted by the LRM from the four colour views.

    ``checkpoint``: a local Lightning ``.ckpt`` (InstantMesh ``instant_mesh_{large,base}.ckpt``
    or Kiss3DGen's PRM ``final_ckpt.ckpt``) matching ``variant`` (``prm``,
    ``instant-mesh-large``, ``instant-mesh-base``, or a config). ``grid_res`` overrides the
    variant's FlexiCubes grid (128); ``extractor``: ``flexicubes`` or ``marching_tetrahedra``.

    Returns a ``trimesh.Trimesh``: vertices ``(N, 3)`` float in the bundle frame (+Y up, front
    +Z) at the bundle's scale, outward faces, vertex colours RGBA uint8 from the colour head.
    Raises ``FileNotFoundError`` for a missing checkpoint,
    :class:`models.reconstruct.lrm.model.CheckpointError` for one that does not match the variant
    and
    :class:`models.reconstruct.lrm.model.EmptySurfaceError` when the prediction has no surface.
    """
    model = load_cached(checkpoint, variant, device)
    cfg = model.config
    dtype = next(model.parameters()).dtype
    images, cameras = model_inputs(bundle, cfg.input_size, cfg.camera_radius)
    planes = model.forward_planes(images.to(device, dtype), cameras.to(device, dtype))
    mesh = model.extract_mesh(planes, grid_res=grid_res, extractor=extractor)
    vertices = model_to_bundle(mesh.vertices.cpu().double().numpy(), bundle.spec.distance,
                               cfg.camera_radius)
    colours = np.round(mesh.colours.cpu().numpy() * 255.0).astype(np.uint8)
    rgba = np.concatenate([colours, np.full((len(colours), 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(
        vertices=vertices.astype(np.float32),
        faces=mesh.faces.cpu().numpy(),
        vertex_colors=rgba,
        process=False,
    )
