"""The base colour of a mesh's surface: material factors, textures and their sampling."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.colour import linear_to_srgb, srgb_to_linear


def linear_material(base_color_factor: Any) -> np.ndarray:
    """glTF ``baseColorFactor`` (trimesh keeps it as RGBA uint8 of the linear value) ->
    linear ``(3,)`` float64 in [0, 1]."""
    return np.asarray(base_color_factor[:3], dtype=np.float64) / 255.0


def apply_factor(rgb: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    """sRGB ``(N, 3)`` in [0, 255] times a linear ``(3,)`` factor (in linear light)."""
    if factor is None:
        return rgb
    return linear_to_srgb(srgb_to_linear(rgb / 255.0) * factor[None]) * 255.0


def material_colour(material: Any, default: np.ndarray | None) -> np.ndarray | None:
    """A material's flat base colour as sRGB ``(3,)`` float64 in [0, 255], or ``default``.

    glTF (PBR) ``baseColorFactor`` is linear and is converted to sRGB; a simple (OBJ/MTL)
    material's ``diffuse`` is taken as sRGB.
    """
    base = getattr(material, "baseColorFactor", None)
    if base is not None:
        return linear_to_srgb(linear_material(base)) * 255.0
    diffuse = getattr(material, "diffuse", None)
    if diffuse is not None:
        return np.asarray(diffuse[:3], dtype=np.float64)
    return default


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of sRGB ``texture`` ``(H, W, C)`` at ``uv`` ``(N, 2)``.

    UV origin is the image's bottom-left (OBJ/trimesh convention; ``v`` up). Returns
    ``(N, 3)`` float64 sRGB in [0, 255]; interpolation happens on the sRGB values.
    """
    tex = np.asarray(texture)
    if tex.ndim == 2:
        tex = np.repeat(tex[..., None], 3, axis=2)
    tex = tex[..., :3].astype(np.float64)
    h, w = tex.shape[:2]
    x = np.asarray(uv[:, 0], dtype=np.float64) * w - 0.5
    y = (1.0 - np.asarray(uv[:, 1], dtype=np.float64)) * h - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xa, xb = x0 % w, (x0 + 1) % w
    ya, yb = y0 % h, (y0 + 1) % h
    top = tex[ya, xa] * (1 - fx) + tex[ya, xb] * fx
    bottom = tex[yb, xa] * (1 - fx) + tex[yb, xb] * fx
    return top * (1 - fy) + bottom * fy


#: Base colour of meshes without texture, colours or material: 0.7 grey as 8-bit sRGB
#: (0.7 * 255 = 178.5, rounded up as the golden bundles are).
UNTEXTURED_RGB = np.array([179.0, 179.0, 179.0])
