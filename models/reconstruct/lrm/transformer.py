"""The triplane transformer: learned triplane query tokens attend to the image tokens.

Names follow the released checkpoints: ``pos_embed`` (the 3 x 32 x 32 learned queries),
``layers.N.{norm1,cross_attn,norm2,self_attn,norm3,mlp}``, ``norm``, ``deconv``. Attention is
PyTorch's ``nn.MultiheadAttention`` without biases, which stores exactly the checkpoint's
tensors: separate ``q/k/v_proj_weight`` when the key width differs (cross-attention to 768-d
image tokens), one packed ``in_proj_weight`` otherwise (self-attention), and a bias-free
``out_proj``.
"""

from __future__ import annotations

import torch
from torch import nn

from models.reconstruct.lrm.config import LRMConfig


class TriplaneBlock(nn.Module):
    """Cross-attention to the image, self-attention among triplane tokens, MLP; all pre-norm."""

    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        d, heads = cfg.transformer_dim, cfg.transformer_heads
        hidden = int(d * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(d, eps=cfg.block_eps)
        self.cross_attn = nn.MultiheadAttention(
            d, heads, kdim=cfg.encoder_dim, vdim=cfg.encoder_dim, bias=False, batch_first=True
        )
        self.norm2 = nn.LayerNorm(d, eps=cfg.block_eps)
        self.self_attn = nn.MultiheadAttention(d, heads, bias=False, batch_first=True)
        self.norm3 = nn.LayerNorm(d, eps=cfg.block_eps)
        # Linear, GELU, Dropout, Linear, Dropout: the Linears sit at indices 0 and 3.
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, d), nn.Dropout(0.0)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3*r*r, D)`` triplane tokens; ``cond``: ``(B, L, D_img)`` image tokens."""
        x = x + self.cross_attn(self.norm1(x), cond, cond, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class TriplaneTransformer(nn.Module):
    """Image tokens ``(B, L, D_img)`` -> triplanes ``(B, 3, C, R, R)`` at ``triplane_high_res``."""

    def __init__(self, cfg: LRMConfig) -> None:
        super().__init__()
        d, r = cfg.transformer_dim, cfg.triplane_low_res
        if cfg.triplane_high_res != 2 * r:
            raise ValueError(f"triplane_high_res must be 2 x triplane_low_res, got {cfg}")
        self.low_res = r
        self.pos_embed = nn.Parameter(torch.randn(1, 3 * r * r, d) * d**-0.5)
        self.layers = nn.ModuleList(TriplaneBlock(cfg) for _ in range(cfg.transformer_layers))
        self.norm = nn.LayerNorm(d, eps=cfg.final_eps)
        self.deconv = nn.ConvTranspose2d(d, cfg.triplane_dim, kernel_size=2, stride=2)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        b, r = image_tokens.shape[0], self.low_res
        x = self.pos_embed.expand(b, -1, -1).to(image_tokens.dtype)
        for layer in self.layers:
            x = layer(x, image_tokens)
        x = self.norm(x)
        # tokens are ordered plane, row, column: (B, 3, r, r, D) -> (3B, D, r, r)
        x = x.view(b, 3, r, r, -1).permute(0, 1, 4, 2, 3).reshape(b * 3, -1, r, r)
        x = self.deconv(x)
        return x.view(b, 3, *x.shape[1:])
