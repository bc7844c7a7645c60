"""Quality metrics of a reconstructed mesh: against a reference mesh, against its bundle, alone.

* Geometry against a reference (both in the bundle frame): :func:`chamfer_fscore` and
  :func:`normal_consistency` on area-weighted surface samples; :func:`seen_fscore`, the F-score
  over the surface the bundle's views see.
* A re-render against the bundle it was reconstructed from: :func:`render_metrics` (mask IoU,
  normal angle error, colour PSNR and SSIM).
* The mesh alone: :func:`mesh_health` (counts, components, watertightness, non-manifold edges).

Image helpers :func:`psnr` and :func:`ssim` work on float images in [0, 1].
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import trimesh
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from models.bundle.spec import Bundle
    from models.raster.base import Rasteriser

#: Surface samples per mesh for Chamfer / F-score (InstantMesh's protocol).
DEFAULT_SAMPLES = 16384
#: F-score distance thresholds, bundle-frame units (the object spans 1.8).
DEFAULT_TAUS = (0.05, 0.1)
#: A face whose area is below this (bundle-frame units squared) counts as degenerate.
DEGENERATE_AREA = 1e-12
#: Vertices closer than 10**-MERGE_DIGITS are the same point for topology checks.
MERGE_DIGITS = 8
#: SSIM constants (Wang et al. 2004) for a data range of 1.
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11


# --------------------------------------------------------------------------- geometry vs reference


def sample_surface(
    mesh: trimesh.Trimesh, count: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted samples of ``mesh``'s surface.

    Returns points ``(count, 3)`` float64 and the unit normals ``(count, 3)`` float64 of the
    faces they lie on, in the mesh's frame. The same mesh and seed give the same samples.
    """
    points, face_index = _sample_faces(mesh, count, seed)
    return points, np.asarray(mesh.face_normals[face_index])


def _sample_faces(mesh: trimesh.Trimesh, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_surface`'s points ``(count, 3)`` and the faces they lie on ``(count,)``."""
    if len(mesh.faces) == 0 or mesh.area <= 0:
        raise ValueError("cannot sample a mesh with no surface area")
    points, face_index = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float64), np.asarray(face_index)


def chamfer_fscore(
    mesh_a: trimesh.Trimesh,
    mesh_b: trimesh.Trimesh,
    *,
    samples: int = DEFAULT_SAMPLES,
    taus: tuple[float, ...] = DEFAULT_TAUS,
    seed: int = 0,
    to_surface: bool = False,
) -> dict:
    """Chamfer distance and F-scores between two meshes in the same frame (bundle frame).

    ``mesh_a`` is the prediction, ``mesh_b`` the reference. Each is sampled with ``samples``
    area-weighted surface points (same ``seed``, so a mesh against itself scores exactly 0).
    ``chamfer = (mean_a min_b |a - b| + mean_b min_a |b - a|) / 2`` (a distance, not squared).
    At each tau: precision = share of a's samples within tau of b, recall = share of b's within
    tau of a, ``F = 2PR / (P + R)`` (0 when both are 0).

    By default a sample's distance to the other mesh is to its nearest *sample* (InstantMesh's
    protocol). That overestimates the distance to the surface by up to about half the samples'
    spacing, which at 16384 samples over an object of area 11-18 is 0.013-0.017, a third of
    tau = 0.05, so a wall whose two sides lie about tau apart (a cup's) is scored by where the
    samples fell. ``to_surface`` measures each sample's distance to the other mesh's faces
    (:func:`trimesh.proximity.closest_point`) instead: the F-score of the surfaces themselves,
    about 1-2 s per 16384 samples and direction (a mesh against itself then scores within
    1e-12 of 0).

    Returns ``{"chamfer": float, "chamfer_ab": float, "chamfer_ba": float,
    "fscore@<tau>": float, "precision@<tau>": float, "recall@<tau>": float, ...}`` with tau
    written by ``format(tau, "g")`` (``"fscore@0.05"``).
    """
    pa, _ = sample_surface(mesh_a, samples, seed)
    pb, _ = sample_surface(mesh_b, samples, seed)
    d_ab = _distances(pa, mesh_b, pb, to_surface)
    d_ba = _distances(pb, mesh_a, pa, to_surface)
    out = {
        "chamfer": float((d_ab.mean() + d_ba.mean()) / 2.0),
        "chamfer_ab": float(d_ab.mean()),
        "chamfer_ba": float(d_ba.mean()),
    }
    for tau in taus:
        precision = float(np.mean(d_ab < tau))
        recall = float(np.mean(d_ba < tau))
        key = format(tau, "g")
        out[f"fscore@{key}"] = _fscore(precision, recall)
        out[f"precision@{key}"] = precision
        out[f"recall@{key}"] = recall
    return out


def seen_fscore(
    prediction: trimesh.Trimesh,
    reference: trimesh.Trimesh,
    seen_prediction: np.ndarray,
    seen_reference: np.ndarray,
    *,
    tau: float = 0.05,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    to_surface: bool = False,
) -> dict:
    """F-score at ``tau`` over the surface the views see (both meshes in the bundle frame).

    As in :func:`chamfer_fscore` (``to_surface`` too), but precision counts only the
    prediction's samples on its seen faces (``seen_prediction``, ``(F_pred,)`` bool) and recall
    only the reference's on its seen faces (``seen_reference``, ``(F_ref,)`` bool, e.g. from
    :func:`models.reconstruct.visibility.seen_faces`); each is measured against all of the
    other mesh. It tells what the views pin down (and refinement can get right) from
    what no view shows (a bowl's inside, a can's bottom), which only a prior can guess.

    Returns ``{"fscore", "precision", "recall", "reference_seen_share"}`` (the last: the share
    of the reference's area on seen faces). A side with no seen samples scores 0.
    """
    pa, fa = _sample_faces(prediction, samples, seed)
    pb, fb = _sample_faces(reference, samples, seed)
    keep_a = np.asarray(seen_prediction, dtype=bool)[fa]
    keep_b = np.asarray(seen_reference, dtype=bool)[fb]
    d_ab = _distances(pa[keep_a], reference, pb, to_surface)
    d_ba = _distances(pb[keep_b], prediction, pa, to_surface)
    precision = float(np.mean(d_ab < tau)) if len(d_ab) else 0.0
    recall = float(np.mean(d_ba < tau)) if len(d_ba) else 0.0
    return {"fscore": _fscore(precision, recall),
            "precision": precision, "recall": recall,
            "reference_seen_share": float(keep_b.mean())}


def _distances(
    points: np.ndarray, mesh: trimesh.Trimesh, mesh_samples: np.ndarray, to_surface: bool
) -> np.ndarray:
    """``(P,)`` distances from ``points`` ``(P, 3)`` to ``mesh``: to its nearest face when
    ``to_surface``, else to the nearest of ``mesh_samples`` ``(S, 3)``."""
    if len(points) == 0:
        return np.zeros(0)
    if to_surface:
        return np.asarray(trimesh.proximity.closest_point(mesh, points)[1], dtype=np.float64)
    return cKDTree(mesh_samples).query(points, k=1)[0]


def _fscore(precision: float, recall: float) -> float:
    """``2PR / (P + R)``, 0 when both are 0."""
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def normal_consistency(
    mesh_a: trimesh.Trimesh,
    mesh_b: trimesh.Trimesh,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> float:
    """Mean ``|cos|`` between the face normals of nearest surface samples, both directions.

    Orientation-free (a flipped face still counts as consistent), in [0, 1]; 1 for a mesh
    against itself.
    """
    pa, na = sample_surface(mesh_a, samples, seed)
    pb, nb = sample_surface(mesh_b, samples, seed)
    _, ia = cKDTree(pb).query(pa, k=1)
    _, ib = cKDTree(pa).query(pb, k=1)
    ab = np.abs(np.einsum("ij,ij->i", na, nb[ia])).mean()
    ba = np.abs(np.einsum("ij,ij->i", nb, na[ib])).mean()
    return float((ab + ba) / 2.0)


# --------------------------------------------------------------------------- mesh alone


def mesh_health(mesh: trimesh.Trimesh) -> dict:
    """Counts and topology checks of a triangle mesh.

    Topology is judged on positions (vertices at the same point, to ``MERGE_DIGITS`` decimals,
    are one vertex), so seams split for UVs or normals do not count as holes.

    Returns ``{"vertices", "faces", "components", "watertight", "boundary_edges",
    "non_manifold_edges", "degenerate_faces", "area", "volume"}``: ``components`` is the number
    of pieces whose faces connect through shared vertices; ``watertight`` means every edge has
    exactly two faces (no boundary and no non-manifold edge) and there is at least one face;
    ``volume`` is the signed volume (meaningful only when watertight). Counted with trimesh
    (vertex merging, edge grouping, connected components).
    """
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    report = {
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(faces)),
        "components": 0,
        "watertight": False,
        "boundary_edges": 0,
        "non_manifold_edges": 0,
        "degenerate_faces": 0,
        "area": 0.0,
        "volume": 0.0,
    }
    if len(faces) == 0:
        return report
    # A copy of positions and faces only: the caller's mesh is never changed, and UVs or
    # normals do not keep coincident vertices apart.
    merged = trimesh.Trimesh(
        vertices=np.asarray(mesh.vertices, dtype=np.float64), faces=faces, process=False
    )
    merged.merge_vertices(merge_tex=True, merge_norm=True, digits_vertex=MERGE_DIGITS)
    report["area"] = float(merged.area)
    # Signed volume (meaningful only when watertight); the inertia tensor is not needed.
    volume = trimesh.triangles.mass_properties(
        merged.triangles, crosses=merged.triangles_cross, skip_inertia=True
    ).volume
    report["volume"] = float(volume)

    collapsed = (merged.faces[:, [0, 1, 2]] == merged.faces[:, [1, 2, 0]]).any(axis=1)
    tiny = merged.area_faces < DEGENERATE_AREA
    report["degenerate_faces"] = int(np.count_nonzero(collapsed | tiny))

    # Edges of the faces that are real triangles: a collapsed face has no proper edges.
    proper = trimesh.Trimesh(merged.vertices, merged.faces[~collapsed], process=False)
    if len(proper.faces):
        _, edge_of = trimesh.grouping.unique_rows(proper.edges_sorted)
        faces_per_edge = np.bincount(edge_of)
        report["boundary_edges"] = int(np.count_nonzero(faces_per_edge == 1))
        report["non_manifold_edges"] = int(np.count_nonzero(faces_per_edge > 2))
        report["watertight"] = bool(proper.is_watertight)

    # Faces sharing a (merged) vertex are one piece; vertices used by no face do not count.
    report["components"] = len(
        trimesh.graph.connected_components(merged.edges, nodes=np.unique(merged.faces))
    )
    return report


# --------------------------------------------------------------------------- images


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB of float images in [0, 1] (``(..., H, W, C)``).

    With ``mask`` ``(..., H, W)`` bool, only those pixels count. Identical images give ``inf``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs images of one shape, got {a.shape} and {b.shape}")
    err = (a - b) ** 2
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(err.mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x**2) / (2.0 * sigma**2))
    return w / w.sum()


def _filter_valid(image: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """Correlate ``image`` with 1D ``taps`` along ``axis``, keeping only the valid region
    (where the window lies inside the image)."""
    from scipy.ndimage import correlate1d

    half = len(taps) // 2
    out = correlate1d(image, taps, axis=axis, mode="constant")
    index = [slice(None)] * image.ndim
    index[axis] = slice(half, image.shape[axis] - (len(taps) - 1 - half))
    return out[tuple(index)]


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    *,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> float:
    """Structural similarity of float images in [0, 1], ``(H, W, C)`` or ``(N, H, W, C)``.

    Gaussian-weighted local statistics (``window`` taps, ``sigma`` pixels, separable, valid
    region only as in Wang et al. 2004), computed per channel and averaged over every pixel,
    channel and image. 1 for identical images.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {a.shape} and {b.shape}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4 or min(a.shape[1:3]) < window:
        raise ValueError(f"ssim needs (N, H, W, C) images of at least {window} px, got {a.shape}")
    # A window over pixels where the images agree scores exactly 1 (equal means and
    # variances, covariance = variance: numerator and denominator are the same floats), so
    # only the windows that reach a differing pixel are filtered: on re-rendered views
    # (white background on both) that is the object's box, not the whole tile.
    n, h, w, c = a.shape
    windows = n * (h - window + 1) * (w - window + 1) * c
    rows, cols = _differing_span(a, b, window)
    if rows is None:
        return 1.0
    a, b = a[:, rows, cols], b[:, rows, cols]
    taps = _gaussian_window(window, sigma)

    def blur(t: np.ndarray) -> np.ndarray:
        return _filter_valid(_filter_valid(t, taps, 1), taps, 2)

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    scores = num / den
    return float((scores.sum() + (windows - scores.size)) / windows)


def _differing_span(a: np.ndarray, b: np.ndarray, window: int) -> tuple[slice | None, slice]:
    """Rows and columns of ``(N, H, W, C)`` images that every ``window``-pixel window touching
    a pixel where ``a`` and ``b`` differ lies within (at least ``window`` of each);
    ``(None, ...)`` when the images are equal."""
    differ = np.any(a != b, axis=(0, 3))  # (H, W)
    if not differ.any():
        return None, slice(None)

    def span(hit: np.ndarray) -> slice:
        where = np.flatnonzero(hit)
        start = max(int(where[0]) - (window - 1), 0)
        stop = min(int(where[-1]) + window, len(hit))
        # Keep at least one whole window (the image has one, checked by the caller).
        start = min(start, max(stop - window, 0))
        stop = max(stop, start + window)
        return slice(start, stop)

    return span(differ.any(axis=1)), span(differ.any(axis=0))


# --------------------------------------------------------------------------- re-render vs bundle


def render_metrics(
    bundle: Bundle, mesh: trimesh.Trimesh, rasteriser: Rasteriser | None = None
) -> dict:
    """Re-render ``mesh`` (bundle frame) with ``bundle``'s cameras and compare view by view.

    Returns ``{"mask_iou": float, "normal_angle_deg": float, "colour_psnr": float,
    "colour_psnr_fg": float, "colour_ssim": float, "per_view": [dict, ...]}``:

    * ``mask_iou``: intersection over union of the foreground masks, all views pooled.
    * ``normal_angle_deg``: mean angle in degrees between the decoded camera-space normals on
      pixels that both call foreground (nan if there are none).
    * ``colour_psnr``: PSNR (dB) of the colour rows, whole tiles (white background included,
      InstantMesh's protocol); ``colour_psnr_fg``: the same on the union of both masks only.
    * ``colour_ssim``: mean SSIM of the colour tiles.

    The three colour figures are NaN for a mesh that carries no colour (no vertex, face or
    texture colours, e.g. ``foundry3d reconstruct --no-texture``): it renders in the
    renderer's default grey, and comparing that with the views would judge the paint, not
    the asset.
    """
    from models.bundle.memo import decoded_views
    from models.render.views import render_views

    render = render_views(mesh, bundle.spec, rasteriser=rasteriser)
    ref_normals, ref_masks = decoded_views(bundle)
    got_masks = render.masks()
    got_normals = render.normals()
    coloured = mesh.visual.kind is not None  # "vertex", "face" or "texture"
    ref_colours = bundle.colours() if coloured else None
    got_colours = render.colours() if coloured else None

    per_view = []
    for v in range(len(ref_masks)):
        per_view.append(
            _compare_view(
                ref_masks[v],
                got_masks[v],
                ref_normals[v],
                got_normals[v],
                None if ref_colours is None else ref_colours[v],
                None if got_colours is None else got_colours[v],
            )
        )
    inter = np.logical_and(ref_masks, got_masks)
    union = np.logical_or(ref_masks, got_masks)
    nan = float("nan")
    return {
        "mask_iou": float(inter.sum() / union.sum()) if union.any() else nan,
        "normal_angle_deg": _mean_angle_deg(ref_normals[inter], got_normals[inter]),
        "colour_psnr": psnr(ref_colours, got_colours) if coloured else nan,
        "colour_psnr_fg": psnr(ref_colours, got_colours, union) if coloured else nan,
        # Every view has the same size, so the pooled mean is the mean of the views' means.
        "colour_ssim": float(np.mean([p["colour_ssim"] for p in per_view])),
        "per_view": per_view,
    }


def _mean_angle_deg(n_ref: np.ndarray, n_got: np.ndarray) -> float:
    if len(n_ref) == 0:
        return float("nan")
    cos = np.clip(np.einsum("ij,ij->i", n_ref.astype(np.float64), n_got.astype(np.float64)), -1, 1)
    return float(np.degrees(np.arccos(cos)).mean())


def _compare_view(
    ref_mask: np.ndarray,
    got_mask: np.ndarray,
    ref_normal: np.ndarray,
    got_normal: np.ndarray,
    ref_colour: np.ndarray | None,
    got_colour: np.ndarray | None,
) -> dict:
    inter = ref_mask & got_mask
    union = ref_mask | got_mask
    coloured = ref_colour is not None and got_colour is not None
    nan = float("nan")
    return {
        "mask_iou": float(inter.sum() / union.sum()) if union.any() else nan,
        "normal_angle_deg": _mean_angle_deg(ref_normal[inter], got_normal[inter]),
        "colour_psnr": psnr(ref_colour, got_colour) if coloured else nan,
        "colour_psnr_fg": psnr(ref_colour, got_colour, union) if coloured else nan,
        "colour_ssim": ssim(ref_colour, got_colour) if coloured else nan,
    }
