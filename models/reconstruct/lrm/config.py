"""Architecture configurations of the sparse-view reconstruction model (InstantMesh / PRM).

The numbers of the released variants come from ``shared/lrm_keys/<variant>.config.json`` (read
from the public InstantMesh and Kiss3DGen model definitions); a config holds exactly what the
model's constructor needs, so a checkpoint plus its config name rebuilds the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LRMConfig:
    """Everything that shapes an LRM: encoder, triplane transformer, decoder, grid, input."""

    name: str
    """Variant name (``instant-mesh-large``, ``instant-mesh-base``, ``prm``, ``tiny``)."""
    encoder_dim: int = 768
    """ViT hidden size (DINO ViT-B/16: 768); also the image-token width fed to cross-attention."""
    encoder_layers: int = 12
    """Number of ViT blocks."""
    encoder_heads: int = 12
    """ViT attention heads."""
    encoder_mlp_dim: int = 3072
    """ViT MLP hidden size."""
    patch_size: int = 16
    """ViT patch size in pixels."""
    encoder_pos_grid: int = 14
    """Side of the stored position-embedding grid (14 = 224 px / 16); interpolated at run time."""
    encoder_eps: float = 1e-12
    """Layer-norm epsilon of the ViT (HF ViT config ``layer_norm_eps``)."""
    camera_dim: int = 16
    """Camera vector length: 12 entries of the 3x4 camera-to-world matrix + fx, fy, cx, cy."""
    transformer_dim: int = 1024
    """Width of the triplane tokens."""
    transformer_layers: int = 16
    """Number of triplane transformer blocks (16 large, 12 base)."""
    transformer_heads: int = 16
    """Attention heads of the triplane transformer."""
    mlp_ratio: float = 4.0
    """MLP hidden size / width in the triplane transformer blocks."""
    block_eps: float = 1e-5
    """Epsilon of the block layer norms (norm1/2/3: PyTorch's default, as constructed upstream)."""
    final_eps: float = 1e-6
    """Epsilon of the final ``transformer.norm``."""
    triplane_low_res: int = 32
    """Side of each plane's token grid (3 x 32 x 32 query tokens)."""
    triplane_high_res: int = 64
    """Side of each plane after the stride-2 transposed convolution."""
    triplane_dim: int = 80
    """Channels per plane (80 large, 40 base)."""
    decoder_hidden: int = 64
    """Hidden width of the decoder MLP heads."""
    decoder_layers: int = 4
    """Linear layers per decoder head."""
    material_head: bool = False
    """PRM's metallic/roughness head ``net_material`` (2 outputs)."""
    box_warp: float = 2.0
    """Side of the cube the triplanes span, in model units (EG3D ``box_warp``)."""
    grid_res: int = 128
    """FlexiCubes grid resolution (cubes per side)."""
    grid_scale: float = 2.1
    """Side of the FlexiCubes grid in model units (the grid spans [-1.05, 1.05]^3)."""
    deformation_multiplier: float = 4.0
    """Deformations are ``tanh(d) / (grid_res * deformation_multiplier)``."""
    weight_scale: float = 0.5
    """FlexiCubes weight scale: beta, alpha = 1 + scale * tanh(w); gamma = scale * sigmoid + ..."""
    input_size: int = 320
    """Side in pixels of each view fed to the encoder (320 InstantMesh, 512 PRM)."""
    camera_radius: float = 4.0
    """Camera distance the model was trained with, model units (4.0 InstantMesh, 3.5 PRM)."""

    def with_(self, **changes: object) -> LRMConfig:
        """A copy with some fields replaced (e.g. a smaller ``grid_res`` for a quick run)."""
        return replace(self, **changes)


INSTANT_MESH_LARGE = LRMConfig(name="instant-mesh-large")
INSTANT_MESH_BASE = LRMConfig(
    name="instant-mesh-base", transformer_layers=12, triplane_dim=40
)
PRM = LRMConfig(name="prm", material_head=True, input_size=512, camera_radius=3.5)
#: A toy model for tests: every block present, tiny sizes, 16^3 grid, 64-pixel views.
TINY = LRMConfig(
    name="tiny",
    encoder_dim=32,
    encoder_layers=1,
    encoder_heads=2,
    encoder_mlp_dim=64,
    encoder_pos_grid=2,
    transformer_dim=32,
    transformer_layers=1,
    transformer_heads=2,
    triplane_low_res=4,
    triplane_high_res=8,
    triplane_dim=8,
    decoder_hidden=16,
    material_head=True,
    grid_res=16,
    input_size=64,
    camera_radius=3.5,
)

CONFIGS: dict[str, LRMConfig] = {
    c.name: c for c in (INSTANT_MESH_LARGE, INSTANT_MESH_BASE, PRM, TINY)
}


def get_config(variant: str | LRMConfig) -> LRMConfig:
    """The config registered under ``variant`` (a config passes through unchanged)."""
    if isinstance(variant, LRMConfig):
        return variant
    try:
        return CONFIGS[variant]
    except KeyError:
        raise ValueError(f"unknown LRM variant {variant!r}; known: {sorted(CONFIGS)}") from None
