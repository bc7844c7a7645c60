"""The LRM module (InstantMesh / PRM mesh variants) and its checkpoint loader.

``LRM(config).state_dict()`` has exactly the keys and shapes of the released checkpoints'
``state_dict`` with the ``lrm_generator.`` prefix removed (``encoder.*``, ``transformer.*``,
``synthesizer.decoder.*``); :func:`load_checkpoint` reads a Lightning ``.ckpt`` strictly.
Geometry is produced in the model frame (z up, model units; see
:mod:`models.reconstruct.lrm.cameras`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.reconstruct.lrm import flexicubes as fc
from models.reconstruct.lrm.config import LRMConfig, get_config
from models.reconstruct.lrm.decoder import TriplaneSynthesizer
from models.reconstruct.lrm.encoder import CameraModulatedEncoder
from models.reconstruct.lrm.transformer import TriplaneTransformer

#: Key prefix of the generator inside the released Lightning checkpoints.
CHECKPOINT_PREFIX = "lrm_generator."
#: How many missing / unexpected / mismatched keys an error message lists.
KEYS_SHOWN = 10
#: Points per chunk when querying the decoder on the grid (bounds peak memory).
QUERY_CHUNK = 262_144
#: The network's FlexiCubes weights are scaled by this before normalisation (as trained).
WEIGHT_OUTPUT_SCALE = 0.1


class CheckpointError(ValueError):
    """A checkpoint that does not match the model (missing, unexpected or mis-shaped keys)."""


class EmptySurfaceError(RuntimeError):
    """The predicted SDF has no zero crossing inside the grid."""


@dataclass(frozen=True)
class LRMMesh:
    """An extracted mesh in the model frame.

    ``vertices``: ``(N, 3)`` float32, model frame (z up, model units); ``faces``: ``(F, 3)``
    int64, outward-facing; ``colours``: ``(N, 3)`` float32 in [0, 1].
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    colours: torch.Tensor


class LRM(nn.Module):
    """Sparse-view reconstruction model: views + cameras -> triplanes -> SDF -> mesh."""

    def __init__(self, config: LRMConfig | str) -> None:
        super().__init__()
        self.config = get_config(config)
        self.encoder = CameraModulatedEncoder(self.config)
        self.transformer = TriplaneTransformer(self.config)
        self.synthesizer = TriplaneSynthesizer(self.config)

    def forward_planes(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """``images`` ``(B, V, 3, H, W)`` in [0, 1], ``cameras`` ``(B, V, 16)`` -> triplanes
        ``(B, 3, C, 2r, 2r)`` float."""
        return self.transformer(self.encoder(images, cameras))

    def _query(self, planes: torch.Tensor, points: torch.Tensor, heads: list[nn.Module]
               ) -> list[torch.Tensor]:
        """Run ``heads`` on the features of ``points`` ``(M, 3)`` in chunks; ``(M, k)`` each."""
        outs: list[list[torch.Tensor]] = [[] for _ in heads]
        for start in range(0, points.shape[0], QUERY_CHUNK):
            feats = self.synthesizer.features(planes, points[None, start:start + QUERY_CHUNK])[0]
            for out, head in zip(outs, heads, strict=True):
                out.append(head(feats))
        return [torch.cat(o) for o in outs]

    @torch.no_grad()
    def extract_mesh(
        self,
        planes: torch.Tensor,
        *,
        grid_res: int | None = None,
        extractor: str = "flexicubes",
        close_boundary: bool = True,
    ) -> LRMMesh:
        """Surface of one triplane set ``(1, 3, C, R, R)`` on the FlexiCubes grid.

        ``grid_res`` overrides the config's (a coarser grid for quick runs); ``extractor`` is a
        key of :data:`models.reconstruct.lrm.flexicubes.EXTRACTORS` (``marching_tetrahedra``
        ignores the
        network's FlexiCubes weights). Raises :class:`EmptySurfaceError` when nothing is inside.
        """
        if planes.shape[0] != 1:
            raise ValueError(f"extract_mesh takes one triplane set, got batch {planes.shape[0]}")
        if extractor not in fc.EXTRACTORS:
            raise ValueError(f"unknown extractor {extractor!r}; known: {sorted(fc.EXTRACTORS)}")
        cfg = self.config
        res = grid_res or cfg.grid_res
        dec = self.synthesizer.decoder
        grid = fc.grid_vertices(res, cfg.grid_scale).to(planes.device, planes.dtype)

        # 1. SDF and deformation at every grid vertex (features at the undeformed vertex)
        sdf, deform = self._query(planes, grid, [dec.net_sdf, dec.net_deformation])
        sdf = fc.prepare_sdf(sdf[:, 0], res, close_boundary)
        if not (sdf < 0).any():
            raise EmptySurfaceError("the predicted SDF is positive everywhere: no surface")
        deform = torch.tanh(deform) / (res * cfg.deformation_multiplier)
        vertices = grid + deform

        # 2. surface extraction; FlexiCubes weights only for the cubes the surface crosses
        if extractor == "flexicubes":
            cube_ids = fc.surface_cubes(sdf, res)
            corners = fc.grid_cubes(res, planes.device)[cube_ids]  # (S, 8)
            used, local = torch.unique(corners, return_inverse=True)
            raw = []
            feats_used = torch.cat([
                self.synthesizer.features(planes, grid[None, used[s:s + QUERY_CHUNK]])[0]
                for s in range(0, used.shape[0], QUERY_CHUNK)
            ])
            step = max(1, QUERY_CHUNK // 8)
            for s in range(0, cube_ids.shape[0], step):
                cube_feats = feats_used[local[s:s + step]].flatten(1)  # (chunk, 8 * 3C)
                raw.append(dec.net_weight(cube_feats) * WEIGHT_OUTPUT_SCALE)
            beta, alpha, gamma = fc.normalise_weights(torch.cat(raw), cfg.weight_scale)
            verts, faces = fc.flexicubes(vertices, sdf, res, cube_ids=cube_ids, beta=beta,
                                         alpha=alpha, gamma=gamma, close_boundary=close_boundary)
        else:
            verts, faces = fc.marching_tetrahedra(vertices, sdf, res,
                                                  close_boundary=close_boundary)
        if faces.shape[0] == 0:
            raise EmptySurfaceError("the predicted surface produced no faces")

        # 3. vertex colours from the colour head at the final vertices
        (rgb,) = self._query(planes, verts, [dec.net_rgb])
        colours = (torch.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001).clamp(0.0, 1.0)
        return LRMMesh(vertices=verts.float(), faces=faces, colours=colours.float())


def _read_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise CheckpointError(
                f"{path} holds more than tensors and allow_pickle is False: {exc}"
            ) from exc
        # Lightning checkpoints may pickle training objects (hyper-parameters, loggers)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no state_dict (top level: {type(ckpt).__name__})")
    keep = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items()
            if k.startswith(CHECKPOINT_PREFIX)}
    if not keep:
        raise CheckpointError(
            f"{path} has no '{CHECKPOINT_PREFIX}*' keys; first keys: {list(state)[:KEYS_SHOWN]}"
        )
    return keep


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys (first
    :data:`KEYS_SHOWN` of each) unless ``state`` matches ``model.state_dict()`` exactly."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
                  for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or mismatched:
        def show(name: str, items: list[str]) -> str:
            more = f" (+{len(items) - KEYS_SHOWN} more)" if len(items) > KEYS_SHOWN else ""
            return f"  {len(items)} {name}: {items[:KEYS_SHOWN]}{more}"

        config = getattr(model, "config", None)
        variant = config.name if isinstance(config, LRMConfig) else type(model).__name__
        raise CheckpointError(
            f"checkpoint {source} does not match the {variant} LRM:\n"
            + "\n".join([show("missing", missing), show("unexpected", unexpected),
                         show("shape-mismatched", mismatched)])
        )


def load_checkpoint(
    path: str | Path, config: LRMConfig | str, *, allow_pickle: bool = True
) -> LRM:
    """Build the ``config`` LRM and load a Lightning checkpoint's ``lrm_generator.*`` strictly.

    ``allow_pickle``: released Lightning files may pickle training objects besides tensors;
    False refuses them (only ``weights_only`` loading). The model is on the CPU in eval mode,
    in the checkpoint's dtype. Raises ``FileNotFoundError`` naming a missing path and
    :class:`CheckpointError` listing mismatched keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LRM checkpoint not found: {path}")
    state = _read_state_dict(path, allow_pickle)
    with torch.device("meta"):
        model = LRM(config)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def save_checkpoint(model: LRM, path: str | Path) -> Path:
    """Write a Lightning-style ``{'state_dict': {'lrm_generator.' + k: v}}`` file; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {CHECKPOINT_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "lrm_variant": model.config.name}, path)
    return path
