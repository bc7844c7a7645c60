"""Triplane sampling and the decoder MLP heads (SDF, colour, FlexiCubes deformation/weights).

Names follow the released checkpoints: ``synthesizer.decoder.net_sdf|net_rgb|net_deformation|
net_weight[|net_material].{0,2,4,6}``. Frames: points are in the model frame (z up, model units;
see :mod:`models.reconstruct.lrm.cameras`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.reconstruct.lrm.config import LRMConfig

#: For plane k, the two world axes read as (grid x = width, grid y = height): the EG3D
#: ``generate_planes`` layout the released weights were trained with -- XY, XZ, ZY.
PLANE_AXES = ((0, 1), (0, 2), (2, 1))


def sample_triplanes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features of each plane at ``points``.

    ``planes``: ``(B, 3, C, R, R)``; ``points``: ``(B, M, 3)`` model frame, the planes spanning
    ``[-box_warp/2, box_warp/2]``. Returns ``(B, M, 3*C)``: plane 0's channels, then 1, then 2.
    Points outside the box read zeros.
    """
    b, n_planes, c, h, w = planes.shape
    coords = points * (2.0 / box_warp)
    grids = torch.stack([coords[..., list(ax)] for ax in PLANE_AXES], dim=1)  # (B, 3, M, 2)
    feats = F.grid_sample(
        planes.reshape(b * n_planes, c, h, w),
        grids.reshape(b * n_planes, 1, -1, 2).to(planes.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B*3, C, 1, M)
    feats = feats.reshape(b, n_planes, c, -1).permute(0, 3, 1, 2)  # (B, M, 3, C)
    return feats.reshape(b, feats.shape[1], n_planes * c)


def _mlp(d_in: int, hidden: int, layers: int, d_out: int) -> nn.Sequential:
    """Linear/ReLU stack; Linears at even indices (0, 2, 4, 6 for four layers)."""
    mods: list[nn.Module] = [nn.Linear(d_in, hidden), nn.ReLU()]
    for _ in range(layers - 2):
        mods += [nn.Linear(hidden, hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden, d_out))
    return nn.Sequential(*mods)


#: FlexiCubes weights per cube: 12 edge (beta) + 8 corner (alpha) + 1 split (gamma).
N_CUBE_WEIGHTS = 21


class TriplaneDecoder(nn.Module):
    """The MLP heads that read triplane features (``3*C`` per point)."""

    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        d = 3 * cfg.triplane_dim
        h, n = cfg.decoder_hidden, cfg.decoder_layers
        self.net_sdf = _mlp(d, h, n, 1)
        self.net_rgb = _mlp(d, h, n, 3)
        self.net_deformation = _mlp(d, h, n, 3)
        # one cube's 8 corner features, concatenated in corner order, -> 21 FlexiCubes weights
        self.net_weight = _mlp(8 * d, h, n, N_CUBE_WEIGHTS)
        if cfg.material_head:
            self.net_material = _mlp(d, h, n, 2)

    def rgb(self, feats: torch.Tensor) -> torch.Tensor:
        """Colour in [0, 1] (sigmoid widened by 0.001 each side, as trained), ``(..., 3)``."""
        return torch.sigmoid(self.net_rgb(feats)) * (1 + 2 * 0.001) - 0.001


class TriplaneSynthesizer(nn.Module):
    """``synthesizer.*``: holds the decoder; the sampling box is a config number, not a weight."""

    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        self.decoder = TriplaneDecoder(cfg)
        self.box_warp = cfg.box_warp

    def features(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return sample_triplanes(planes, points, self.box_warp)
