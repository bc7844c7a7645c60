"""The LRM init backend: InstantMesh / PRM sparse-view reconstruction from a bundle's views.

Public API: :func:`lrm_init` (bundle + checkpoint -> coarse ``trimesh.Trimesh`` in the bundle
frame), :func:`load_checkpoint` / :func:`save_checkpoint` (Lightning ``.ckpt`` files with
``lrm_generator.*`` keys), :class:`LRM` and the configs in :data:`CONFIGS`.
"""

from models.reconstruct.lrm.config import CONFIGS, LRMConfig, get_config
from models.reconstruct.lrm.model import (
    LRM,
    CheckpointError,
    EmptySurfaceError,
    load_checkpoint,
    save_checkpoint,
)
from models.reconstruct.lrm.reconstruct import clear_cache, lrm_init

__all__ = [
    "CONFIGS",
    "LRM",
    "CheckpointError",
    "EmptySurfaceError",
    "LRMConfig",
    "clear_cache",
    "get_config",
    "load_checkpoint",
    "lrm_init",
    "save_checkpoint",
]
