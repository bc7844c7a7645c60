"""The LRM image encoder: a DINO ViT-B/16 whose layer norms are modulated by the camera (adaLN).

Parameter names follow the released checkpoints (a fork of Hugging Face's ``ViTModel``):
``model.embeddings.*``, ``model.encoder.layer.N.*`` (with ``adaLN_modulation.1``),
``model.layernorm.*`` and ``camera_embedder.{0,2}.*``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.reconstruct.lrm.config import LRMConfig


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resample a ``(1, 1 + G*G, D)`` position embedding to a ``grid_h x grid_w`` patch grid.

    Uses the old DINO form: bicubic with ``scale_factor = ((grid + 0.1) / G)`` rather than an
    output size. PyTorch then maps coordinates with that exact factor, which is what the
    released weights were trained with, so the numbers match the original code (an output-size
    call gives slightly different values). Returns ``(1, 1 + grid_h*grid_w, D)``.
    """
    n = pos_embed.shape[1] - 1
    side = int(math.isqrt(n))
    if n == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(
        patch_pos.float(),
        scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
        mode="bicubic",
        align_corners=False,
    ).to(pos_embed.dtype)
    if patch_pos.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(f"position interpolation gave {tuple(patch_pos.shape[-2:])}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


class _PatchEmbeddings(nn.Module):
    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            3, cfg.encoder_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )


class _Embeddings(nn.Module):
    """CLS token + patch projection + (interpolated) position embedding."""

    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.encoder_dim))
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, cfg.encoder_pos_grid**2 + 1, cfg.encoder_dim)
        )
        self.patch_embeddings = _PatchEmbeddings(cfg)
        self.patch_size = cfg.patch_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised pixels -> ``(N, 1 + (H/p)(W/p), D)`` tokens."""
        n, _, h, w = pixels.shape
        x = self.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        pos = interpolate_pos_embed(
            self.position_embeddings, h // self.patch_size, w // self.patch_size
        )
        return x + pos


class _SelfAttention(nn.Module):
    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        d = cfg.encoder_dim
        self.heads = cfg.encoder_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                             split(self.value(x)))
        return out.transpose(1, 2).reshape(n, length, d)


class _Dense(nn.Module):
    """A holder so the Linear is named ``<parent>.dense`` as in the checkpoint."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _Attention(nn.Module):
    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        self.attention = _SelfAttention(cfg)
        self.output = _Dense(cfg.encoder_dim, cfg.encoder_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1.0 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ViTLayer(nn.Module):
    """Pre-norm ViT block whose two layer norms are shifted/scaled by the camera embedding."""

    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        d = cfg.encoder_dim
        self.attention = _Attention(cfg)
        self.intermediate = _Dense(d, cfg.encoder_mlp_dim)
        self.output = _Dense(cfg.encoder_mlp_dim, d)
        self.layernorm_before = nn.LayerNorm(d, eps=cfg.encoder_eps)
        self.layernorm_after = nn.LayerNorm(d, eps=cfg.encoder_eps)
        # index 0 is the parameter-free SiLU, so the Linear is stored as ``adaLN_modulation.1``
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 4 * d))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, L, D)`` tokens; ``cond``: ``(N, D)`` camera embedding."""
        shift_a, scale_a, shift_m, scale_m = self.adaLN_modulation(cond).chunk(4, dim=1)
        x = x + self.attention(_modulate(self.layernorm_before(x), shift_a, scale_a))
        h = _modulate(self.layernorm_after(x), shift_m, scale_m)
        h = F.gelu(self.intermediate.dense(h))
        return x + self.output.dense(h)


class _LayerStack(nn.Module):
    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(cfg) for _ in range(cfg.encoder_layers))


class ViTModel(nn.Module):
    """The camera-modulated ViT; ``forward(pixels, cond) -> (N, L, D)`` last hidden state."""

    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _LayerStack(cfg)
        self.layernorm = nn.LayerNorm(cfg.encoder_dim, eps=cfg.encoder_eps)

    def forward(self, pixels: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layer:
            x = layer(x, cond)
        return self.layernorm(x)


#: DINO's preprocessing: pixels in [0, 1] -> (p - 0.5) / 0.5 (the checkpoint's processor config).
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5


class CameraModulatedEncoder(nn.Module):
    """``encoder.*`` of the checkpoint: the ViT plus the camera embedder feeding its adaLN."""

    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        self.model = ViTModel(cfg)
        d = cfg.encoder_dim
        self.camera_embedder = nn.Sequential(
            nn.Linear(cfg.camera_dim, d), nn.SiLU(), nn.Linear(d, d)
        )

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """Image tokens of every view.

        ``images``: ``(B, V, 3, H, W)`` float RGB in [0, 1], H and W multiples of the patch size;
        ``cameras``: ``(B, V, 16)`` camera vectors (see :mod:`models.reconstruct.lrm.cameras`).
        Returns ``(B, V * (1 + H*W/p^2), D)`` float tokens, views in order.
        """
        b, v = images.shape[:2]
        pixels = (images.flatten(0, 1) - IMAGE_MEAN) / IMAGE_STD
        cond = self.camera_embedder(cameras.flatten(0, 1).to(pixels.dtype))
        tokens = self.model(pixels, cond)
        return tokens.reshape(b, v * tokens.shape[1], tokens.shape[2])
