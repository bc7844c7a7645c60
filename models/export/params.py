"""Parameters of the ``export`` stage: what the game-ready deliverables look like.

The manifest's ``export_<field>`` params map one-to-one onto :class:`ExportParams` fields
(``export_faces: 8000`` sets ``faces``). :meth:`ExportParams.from_mapping` rejects unknown
keys naming the nearest valid one and :func:`check_inputs` fails loudly on a bad value;
neither fixes the input quietly.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import Any

from models.param_fields import ParameterError

TEXTURE_MODES = ("texture", "vertex")
NORMAL_SOURCES = ("mesh", "bundle", "none")
PIVOTS = ("bottom", "centre")
#: Formats written by :func:`models.export.asset.export_asset`; ``fbx`` is refused with a reason.
FORMATS = ("glb", "obj", "usdz")
#: Texture sides a GPU handles well (powers of two).
TEXTURE_SIZES = (256, 512, 1024, 2048, 4096)
#: Base-colour texels per bundle-tile pixel by default: 512-px tiles -> 2048^2, 256 -> 1024^2.
TEXELS_PER_TILE_PIXEL = 4


class ExportParamsError(ParameterError):
    """An export parameter with a value the stage cannot use (a permanent failure)."""


@dataclass(frozen=True)
class ExportParams:
    """How to turn a textured mesh into deliverables. Every field is a manifest ``params`` key."""

    texture_mode: str = "texture"
    """``texture``: UV atlas with a baked base-colour texture (and normal map); ``vertex``:
    per-vertex colours (``COLOR_0``), no UVs."""
    texture_size: int | None = None
    """Side of the LOD 0 base-colour texture in texels (a power of two); default: 4 texels per
    bundle-tile pixel (2048 for 512-px tiles, 1024 for 256). LOD k uses half the side per
    quartering of its faces."""
    faces: int = 20000
    """Face budget of LOD 0; the mesh is decimated (fast-simplification) to within 2 % of it
    when it has more faces, and kept as it is otherwise."""
    lods: tuple[float, ...] = (1.0, 0.25)
    """Face fractions of ``faces``, one per LOD, the first 1.0: ``asset.glb`` is LOD 0,
    ``asset_lod1.glb`` LOD 1 and so on."""
    normal_source: str = "bundle"
    """Where the tangent-space normal map comes from: ``bundle`` (the bundle's normal maps,
    projected like the colours; texels no view sees keep the LOD's own normal), ``mesh`` (the
    full-resolution refined mesh, sampled at each texel's closest point) or ``none``. The
    default is what benchmarks/texture.py measured closer to the bundle on LOD 1 (median
    0.44 vs 0.52 degrees over 8 objects at 512-px tiles)."""
    normal_map_scale: float = 0.5
    """Side of the normal map as a fraction of the base-colour texture's side."""
    size_m: float | None = None
    """Largest extent of the exported object in metres. Default: the source's true size when
    the bundle sidecar records a library mesh's ``scale`` (``1 / scale`` x the bundle-frame
    extent, source units taken as metres), otherwise 1.0 m."""
    pivot: str = "bottom"
    """``bottom``: bounding-box centre in x and z, lowest point on y = 0 (the object rests on
    the ground); ``centre``: bounding-box centre at the origin."""
    formats: tuple[str, ...] = ("glb",)
    """Files besides the GLBs: ``obj`` (``asset_obj.zip``: OBJ + MTL + PNGs), ``usdz``
    (``asset.usdz``, ARKit-compliant); ``glb`` is always written."""
    thumbnail_size: int = 512
    """Side of ``thumbnail.png`` (lit, textured, 3/4 view) in pixels."""
    turntable_frames: int = 24
    """Frames of ``turntable.webp`` (one full turn, lit, textured, 15 degrees apart); 0 writes
    none. Each frame is a supersampled studio render, the largest cost of the export's previews
    (36 frames took 3.2 s of CPU for a 12k-face mesh, more than the rest of a vertex-colour
    export)."""
    turntable_size: int = 256
    """Side of each turntable frame in pixels."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None, **defaults: Any) -> ExportParams:
        """Params from a manifest ``params`` dict over ``defaults``.

        Unknown keys raise :class:`ExportParamsError` naming the nearest valid key; lists
        become tuples; the result passes :func:`check_inputs`.
        """
        known = [f.name for f in fields(cls)]
        merged = {k: v for k, v in defaults.items() if v is not None}
        merged.update(data or {})
        for key in sorted(merged):
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1, cutoff=0.0)
                raise ExportParamsError(f"unknown export param {key!r}; did you mean {near[0]!r}?")
        for key in ("lods", "formats"):
            if key in merged:
                value = merged[key]
                merged[key] = (value,) if isinstance(value, str | int | float) else tuple(value)
        params = replace(cls(), **merged)
        check_inputs(params)
        return params

    def texture_side(self, tile: int) -> int:
        """The LOD 0 base-colour side for bundle tiles of ``tile`` pixels."""
        if self.texture_size is not None:
            return int(self.texture_size)
        size = TEXELS_PER_TILE_PIXEL * tile
        return min(TEXTURE_SIZES, key=lambda s: abs(s - size))


def check_inputs(params: ExportParams) -> None:
    """Raise :class:`ExportParamsError` naming the first bad value; return ``None`` if fine."""
    p = params
    if p.texture_mode not in TEXTURE_MODES:
        raise ExportParamsError(
            f"export_texture_mode must be one of {TEXTURE_MODES}, got {p.texture_mode!r}"
        )
    if p.texture_size is not None and p.texture_size not in TEXTURE_SIZES:
        raise ExportParamsError(
            f"export_texture_size must be one of {TEXTURE_SIZES}, got {p.texture_size!r}"
        )
    if not isinstance(p.faces, int) or p.faces < 12:
        raise ExportParamsError(f"export_faces must be an integer >= 12, got {p.faces!r}")
    lods = p.lods
    if not lods or any(not isinstance(f, int | float) for f in lods):
        raise ExportParamsError(f"export_lods must be a list of numbers, got {list(lods)!r}")
    if float(lods[0]) != 1.0 or any(not 0 < b < a for a, b in zip(lods, lods[1:], strict=False)):
        raise ExportParamsError(
            f"export_lods must start at 1.0 and decrease within (0, 1], got {list(lods)}"
        )
    if p.normal_source not in NORMAL_SOURCES:
        raise ExportParamsError(
            f"export_normal_source must be one of {NORMAL_SOURCES}, got {p.normal_source!r}"
        )
    if not 0 < p.normal_map_scale <= 1:
        raise ExportParamsError(
            f"export_normal_map_scale must be in (0, 1], got {p.normal_map_scale}"
        )
    if p.size_m is not None and not (isinstance(p.size_m, int | float) and p.size_m > 0):
        raise ExportParamsError(
            f"export_size_m must be a positive number of metres, got {p.size_m!r}"
        )
    if p.pivot not in PIVOTS:
        raise ExportParamsError(f"export_pivot must be one of {PIVOTS}, got {p.pivot!r}")
    for fmt in p.formats:
        if fmt == "fbx":
            raise ExportParamsError(
                "export_formats: fbx cannot be written here (no well-kept open FBX writer for "
                "Python); use glb (Unity, Unreal, Godot, Blender import it), obj or usdz"
            )
        if fmt not in FORMATS:
            raise ExportParamsError(f"export_formats: {fmt!r} is not one of {FORMATS}")
    if p.thumbnail_size < 16:
        raise ExportParamsError(f"export_thumbnail_size must be >= 16, got {p.thumbnail_size}")
    if p.turntable_frames < 0 or p.turntable_size < 16:
        raise ExportParamsError(
            "export_turntable_frames must be >= 0 and export_turntable_size >= 16, got "
            f"{p.turntable_frames} frames of "
            f"{p.turntable_size} px"
        )
