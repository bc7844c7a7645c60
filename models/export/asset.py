"""The export stage's work: from a refined, coloured mesh and its bundle to the deliverables.

:func:`export_asset` reads as the process: place the object (size, pivot), decimate to each
LOD's face budget, unwrap and bake base colour + normal map per LOD (or keep vertex colours),
write ``asset.glb`` / ``asset_lod1.glb`` ..., the extra formats, and the previews
(``preview.png``, ``thumbnail.png``, ``turntable.webp``). Baking happens in the bundle frame;
only the written positions are moved to metres with the chosen pivot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trimesh

from models.bundle.spec import Bundle, BundleSpec
from models.export.lod import LodMesh
from models.export.params import ExportParams

if TYPE_CHECKING:
    from models.raster.base import Rasteriser
    from models.reconstruct.texture import ViewImages

#: Largest extent (metres) of an object whose bundle records no true size.
DEFAULT_SIZE_M = 1.0
#: Bundle producers whose sidecar ``scale`` maps a real source mesh (units taken as metres)
#: into the bundle frame: the library renderer and the library generator.
SIZED_PRODUCERS = ("foundry3d.render_bundle", "foundry3d.library")
#: ``asset.extras`` key of the placement: ``bundle_xyz = position / scale + anchor``.
BUNDLE_FRAME_KEY = "bundle_frame"


@dataclass
class ExportResult:
    """What :func:`export_asset` wrote: file name -> path, per-LOD face counts, and per step
    (``prepare_views``, ``lod<k>.<step>``, ``preview``...) its wall seconds (``timings``) and
    the process's CPU seconds, all threads (``cpu_seconds``)."""

    files: dict[str, Path]
    lod_faces: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    lods: list[LodMesh] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def export_asset(
    mesh: trimesh.Trimesh,
    bundle: Bundle,
    out_dir: str | Path,
    params: ExportParams | None = None,
    *,
    provenance: dict[str, Any] | None = None,
    detail: trimesh.Trimesh | None = None,
    previews: bool = True,
    rasteriser: Rasteriser | None = None,
) -> ExportResult:
    """Write the asset's deliverables into ``out_dir`` and return what was written.

    ``mesh``: the refined mesh in the bundle frame (+Y up, front +Z; any colours on it are
    ignored: colour comes from ``bundle``). ``detail``: the full-resolution mesh the normal
    maps are baked from (default ``mesh``). ``provenance``: plain JSON-able values (prompt or
    image hash, seed, generator, weights, source licence...) written into every GLB's
    ``asset.extras``.
    """
    from models.export.gltf import GltfMesh, write_glb

    params = params or ExportParams()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    clock = _Clock(timings, cpu_seconds)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    detail_mesh = (
        (vertices, faces)
        if detail is None
        else (np.asarray(detail.vertices, np.float64), np.asarray(detail.faces, np.int64))
    )

    # 1. per LOD: decimate, then colour (baked texture + normal map, or vertex colours); the
    # bundle's views are prepared once for all of them
    from models.reconstruct.texture import ViewImages

    base_size = params.texture_side(bundle.tile)
    with clock("prepare_views"):
        images = ViewImages(bundle)
    lods = [
        build_lod(
            vertices,
            faces,
            bundle,
            params,
            fraction,
            base_size,
            detail_mesh,
            clock.prefixed(f"lod{level}."),
            rasteriser,
            images,
        )
        for level, fraction in enumerate(params.lods)
    ]

    # 2. placement in metres with the pivot, from LOD 0 (so asset.glb rests exactly on y = 0;
    # every LOD shares it, so swapping LODs does not move the object)
    anchor, scale = placement(lods[0].vertices, bundle.spec, params)
    extras = _extras(params, provenance, scale, anchor)
    files: dict[str, Path] = {}
    for level, lod in enumerate(lods):
        with clock(f"lod{level}.write_glb"):
            name = "asset.glb" if level == 0 else f"asset_lod{level}.glb"
            files[name] = write_glb(
                GltfMesh(
                    positions=(lod.vertices - anchor) * scale,
                    faces=lod.faces,
                    normals=lod.normals,
                    uv=lod.uv,
                    tangents=lod.tangents,
                    colours=lod.colours,
                    base_colour=lod.base_colour,
                    normal_map=lod.normal_map,
                    name="asset" if level == 0 else f"asset_lod{level}",
                    extras={**extras, "lod": level, "faces": int(len(lod.faces))},
                ),
                out_dir / name,
            )

    # 3. other formats, from LOD 0
    from models.export import formats

    for fmt in params.formats:
        if fmt == "glb":
            continue
        with clock(f"write_{fmt}"):
            files.update(formats.WRITERS[fmt](lods[0], anchor, scale, out_dir))

    # 4. previews of LOD 0 (bundle frame, normalised for framing by the renderers)
    if previews:
        files.update(write_previews(lods[0].to_trimesh(), out_dir, params, clock, rasteriser))
    return ExportResult(
        files=files,
        lod_faces=[len(lod.faces) for lod in lods],
        timings=timings,
        lods=lods,
        cpu_seconds=cpu_seconds,
    )


def build_lod(
    vertices: np.ndarray,
    faces: np.ndarray,
    bundle: Bundle,
    params: ExportParams,
    fraction: float,
    base_size: int,
    detail: tuple[np.ndarray, np.ndarray],
    clock: _Clock | None = None,
    rasteriser: Rasteriser | None = None,
    images: ViewImages | None = None,
) -> LodMesh:
    """One LOD (bundle frame): ``fraction`` of ``params.faces`` faces, coloured from
    ``bundle``; textured at ``base_size * sqrt(fraction)`` (a power of two) in texture mode.

    ``images``: the bundle's views prepared once for every LOD (default: prepared here).
    The LOD's visibility (its depth in each view) is rasterised once and serves its vertex
    colours, its base-colour bake and its normal-map bake.
    """
    from models.export.bake import (
        fill_gutters,
        project_base_colour,
        project_normals,
        texels,
        unwrap,
        vertex_normals,
    )
    from models.export.lod import decimate_lod
    from models.reconstruct.texture import ViewImages, _ViewSampler, fill_unseen

    clock = clock or _Clock({})
    with clock("decimate"):
        v, f = decimate_lod(vertices, faces, max(4, int(round(params.faces * fraction))))
    with clock("visibility"):
        images = images or ViewImages(bundle)
        sampler = _ViewSampler(bundle, v, f, None, None, rasteriser, images)
    with clock("vertex_colours"):
        # view-projected vertex colours, propagated over the surface into unseen regions
        normals = np.asarray(trimesh.Trimesh(v, f, process=False).vertex_normals, np.float64)
        colours, seen = sampler.blend(v, normals)
        colours = fill_unseen(colours, seen, f)
    if params.texture_mode == "vertex":
        return LodMesh(vertices=v, faces=f, normals=vertex_normals(v, f), colours=colours)

    size = lod_texture_size(base_size, fraction)
    with clock("unwrap"):
        uvm = unwrap(v, f, size)
    with clock("texels"):
        cover = texels(uvm, size)
        n_size = max(16, int(round(size * params.normal_map_scale)))
        n_cover = cover if n_size == size else texels(uvm, n_size)
    with clock("bake_colour"):
        colour_texels = project_base_colour(uvm, cover, sampler, colours)
    with clock("fill_colour"):
        base = fill_gutters(cover, colour_texels)
    normal_map = None
    if params.normal_source != "none":
        with clock("bake_normal"):
            if params.normal_source == "mesh":
                normal_texels = project_normals(uvm, n_cover, detail=detail)
            else:
                normal_texels = project_normals(uvm, n_cover, sampler=sampler)
        with clock("fill_normal"):
            normal_map = fill_gutters(n_cover, normal_texels)
    return LodMesh(
        vertices=uvm.vertices,
        faces=uvm.faces,
        normals=uvm.normals,
        uv=uvm.uv,
        tangents=uvm.tangents,
        base_colour=base,
        normal_map=normal_map,
    )


def lod_texture_size(base_size: int, fraction: float) -> int:
    """Texture side of a LOD with ``fraction`` of LOD 0's faces: ``base * sqrt(fraction)``
    rounded to a power of two, at least 64 (texel density per face stays about the same)."""
    side = base_size * np.sqrt(fraction)
    return int(max(64, 2 ** int(round(np.log2(side)))))


def placement(
    vertices: np.ndarray, spec: BundleSpec, params: ExportParams
) -> tuple[np.ndarray, float]:
    """``(anchor (3,), scale)`` so that ``(bundle_xyz - anchor) * scale`` is the written
    position in metres: largest extent ``size_m`` (or the library source's true size, or
    :data:`DEFAULT_SIZE_M`), pivot at the bottom centre or the bounding-box centre."""
    lo, hi = vertices.min(0), vertices.max(0)
    extent = float(np.max(hi - lo))
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError(f"cannot place a mesh with bounding box {lo} .. {hi}")
    if params.size_m is not None:
        size = float(params.size_m)
    elif spec.producer in SIZED_PRODUCERS and spec.scale > 0:
        # a library mesh: bundle_xyz = (source - offset) * scale, source units taken as metres
        size = extent / spec.scale
    else:
        size = DEFAULT_SIZE_M
    anchor = (lo + hi) / 2.0
    if params.pivot == "bottom":
        anchor[1] = lo[1]
    return anchor, size / extent


def write_previews(
    mesh: trimesh.Trimesh,
    out_dir: Path,
    params: ExportParams,
    clock: _Clock | None = None,
    rasteriser: Rasteriser | None = None,
) -> dict[str, Path]:
    """``preview.png`` (4 views + 3/4, unlit and shaded), ``thumbnail.png`` and
    ``turntable.webp`` (studio-lit) of ``mesh`` (bundle frame)."""
    from models.render.preview import preview_sheet
    from models.render.studio import thumbnail, turntable

    clock = clock or _Clock({})
    files = {}
    with clock("preview"):
        files["preview.png"] = preview_sheet(mesh, out_dir / "preview.png", rasteriser=rasteriser)
    with clock("thumbnail"):
        files["thumbnail.png"] = thumbnail(
            mesh, out_dir / "thumbnail.png", size=params.thumbnail_size, rasteriser=rasteriser
        )
    if params.turntable_frames:
        with clock("turntable"):
            files["turntable.webp"] = turntable(
                mesh,
                out_dir / "turntable.webp",
                frames=params.turntable_frames,
                size=params.turntable_size,
                rasteriser=rasteriser,
            )
    return files


def _extras(
    params: ExportParams, provenance: dict[str, Any] | None, scale: float, anchor: np.ndarray
) -> dict:
    from dataclasses import asdict
    from importlib import metadata

    try:
        version = metadata.version("foundry3d")
    except metadata.PackageNotFoundError:
        version = "unknown"
    export = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()}
    return {
        **(provenance or {}),
        "foundry3d_version": version,
        "export_params": export,
        # bundle_xyz = position / scale + anchor: how evaluation compares the file with the
        # bundle it came from
        BUNDLE_FRAME_KEY: {"scale": float(scale), "anchor": [float(a) for a in anchor]},
    }


def load_in_bundle_frame(path: str | Path) -> trimesh.Trimesh:
    """An exported GLB (metres, pivot) read back into its bundle's frame, with its texture or
    colours, using the placement recorded in ``asset.extras``; a GLB without that record is
    returned as it is (it is in the bundle frame already)."""
    from models.geometry.glb import _split_glb, load_glb

    gltf, _ = _split_glb(Path(path).read_bytes())
    mesh = load_glb(path)
    frame = gltf.get("asset", {}).get("extras", {}).get(BUNDLE_FRAME_KEY)
    if frame:
        vertices = np.asarray(mesh.vertices, dtype=np.float64) / frame["scale"]
        mesh.vertices = vertices + np.asarray(frame["anchor"], dtype=np.float64)
    return mesh


class _Clock:
    """Adds the wall seconds of each ``with clock(name):`` block to ``timings[name]`` and the
    process's CPU seconds (all threads) to ``cpu[name]``; ``prefixed("lod1.")`` is a clock
    that adds into the same tables under prefixed names."""

    def __init__(
        self, timings: dict[str, float], cpu: dict[str, float] | None = None, prefix: str = ""
    ) -> None:
        self.timings = timings
        self.cpu = {} if cpu is None else cpu
        self.prefix = prefix
        self._open: list[tuple[str, float, float]] = []

    def prefixed(self, prefix: str) -> _Clock:
        return _Clock(self.timings, self.cpu, self.prefix + prefix)

    def __call__(self, name: str) -> _Clock:
        self._name = self.prefix + name
        return self

    def __enter__(self) -> None:
        self._open.append((self._name, time.perf_counter(), time.process_time()))

    def __exit__(self, *exc: object) -> None:
        name, wall, cpu = self._open.pop()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - wall
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu
