"""One level of detail of an exported asset, as the writers and renderers take it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh


@dataclass
class LodMesh:
    """One written level of detail, in the bundle frame: a :class:`models.export.bake.UVMesh`
    with its images, or (vertex mode) vertices, faces and sRGB colours in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    uv: np.ndarray | None = None
    tangents: np.ndarray | None = None
    colours: np.ndarray | None = None
    base_colour: np.ndarray | None = None
    normal_map: np.ndarray | None = None

    def to_trimesh(self) -> trimesh.Trimesh:
        """A :class:`trimesh.Trimesh` (bundle frame) that the renderers draw: textured
        (trimesh's bottom-left UVs) or vertex-coloured."""
        from PIL import Image

        mesh = trimesh.Trimesh(self.vertices, self.faces, process=False)
        if self.base_colour is not None:
            material = trimesh.visual.material.PBRMaterial(
                baseColorTexture=Image.fromarray(self.base_colour, "RGB")
            )
            uv = np.stack([self.uv[:, 0], 1.0 - self.uv[:, 1]], axis=1)
            mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        elif self.colours is not None:
            rgba = np.concatenate([self.colours, np.ones((len(self.colours), 1))], axis=1)
            mesh.visual = trimesh.visual.ColorVisuals(
                mesh, vertex_colors=np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)
            )
        return mesh
