"""Continuous remeshing: local edge operations driving a triangle mesh toward a target edge length.

Every operation is a free function over numpy arrays that returns new arrays (the inputs are never
changed), is vectorised over edges (each pass picks an independent set of edges and applies them
all at once), and tolerates non-manifold or open input: edges with other than two faces, and their
vertices, are left alone by collapses, flips and smoothing; splits work on any edge.

Per-vertex attributes (``attrs``, ``(V, K)`` float) ride along: a split vertex gets the mean of its
edge's ends, a collapsed pair keeps the mean of the two. The optimiser uses this to carry its Adam
moments through remeshing.

Frames and units: ``vertices`` ``(V, 3)`` float (any frame; lengths in the same units as
``target``), ``faces`` ``(F, 3)`` int64, counter-clockwise seen from outside.
"""

from __future__ import annotations

import numba
import numpy as np

from models.geometry.normals import face_normals, face_normals_and_areas, vertex_normals

#: Edges longer than this multiple of the target length are split.
SPLIT_RATIO = 4.0 / 3.0
#: Edges shorter than this multiple of the target length are collapsed.
COLLAPSE_RATIO = 4.0 / 5.0
#: A collapse is refused when it would turn a neighbouring face by more than this (cosine).
COLLAPSE_MIN_NORMAL_COS = 0.2
#: A flip is refused across creases sharper than this (cosine of the dihedral angle).
FLIP_MIN_DIHEDRAL_COS = 0.5
#: Tangential smoothing leaves a vertex alone when one of its faces turns further than this
#: (cosine; 30 degrees) from its normal.
CREASE_COS = 0.866
#: Ideal valence of an interior vertex.
TARGET_VALENCE = 6
#: Faces at or below this area (units squared) count as degenerate for collapses and flips.
MIN_FACE_AREA = 0.5e-14


def edges_unique(faces: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges and the face-to-edge map.

    Returns ``edges`` ``(E, 2)`` int64 with ``edges[:, 0] < edges[:, 1]``, sorted by
    ``(edges[:, 0], edges[:, 1])``, and ``face_edges`` ``(F, 3)`` int64, where
    ``face_edges[f, k]`` is the edge from ``faces[f, k]`` to ``faces[f, (k + 1) % 3]``.
    """
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return np.zeros((0, 2), np.int64), np.zeros((0, 3), np.int64)
    # Every remeshing operation needs this map; a bucket sort by the lower vertex (numba) is
    # linear and several times faster than np.unique's sort of the packed keys.
    edges, inverse = _edges_unique_kernel(faces, int(num_vertices))
    return edges, inverse.reshape(-1, 3)


@numba.njit(cache=True, nogil=True)
def _edges_unique_kernel(faces, num_vertices):  # pragma: no cover - compiled
    n = 3 * faces.shape[0]
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    for f in range(faces.shape[0]):
        for k in range(3):
            a = faces[f, k]
            b = faces[f, (k + 1) % 3]
            lo[3 * f + k] = min(a, b)
            hi[3 * f + k] = max(a, b)
    # counting sort of the half-edges by their lower vertex
    start = np.zeros(num_vertices + 1, np.int64)
    for i in range(n):
        start[lo[i] + 1] += 1
    for v in range(num_vertices):
        start[v + 1] += start[v]
    fill = start[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[fill[lo[i]]] = i
        fill[lo[i]] += 1
    edges = np.empty((n, 2), np.int64)
    inverse = np.empty(n, np.int64)
    count = 0
    for v in range(num_vertices):
        s = start[v]
        e = start[v + 1]
        # insertion sort of the bucket by the upper vertex (buckets hold a vertex's valence)
        for i in range(s + 1, e):
            item = order[i]
            key = hi[item]
            j = i - 1
            while j >= s and hi[order[j]] > key:
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = item
        prev = -1
        for i in range(s, e):
            h = hi[order[i]]
            if h != prev:
                edges[count, 0] = v
                edges[count, 1] = h
                count += 1
                prev = h
            inverse[order[i]] = count - 1
    return edges[:count].copy(), inverse


@numba.njit(cache=True, nogil=True)
def _edge_face_slots(face_edges_flat, num_edges):  # pragma: no cover - compiled
    """Per edge: how many face slots ``3 f + k`` map to it and the first two (ascending)."""
    counts = np.zeros(num_edges, np.int64)
    first = np.full(num_edges, -1, np.int64)
    second = np.full(num_edges, -1, np.int64)
    for s in range(face_edges_flat.shape[0]):
        e = face_edges_flat[s]
        if counts[e] == 0:
            first[e] = s
        elif counts[e] == 1:
            second[e] = s
        counts[e] += 1
    return counts, first, second


def edge_lengths(vertices: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(E,)`` Euclidean lengths of ``edges`` ``(E, 2)``."""
    return np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)


def _scatter_sum(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """``out[index[i]] += values[i]`` for ``values`` ``(N, C)`` (bincount: faster than add.at)."""
    return np.stack(
        [np.bincount(index, weights=values[:, c], minlength=size) for c in range(values.shape[1])],
        axis=1,
    )


def _irregular_vertices(num_vertices: int, edges: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(V,)`` bool: vertices on an edge that does not have exactly two faces."""
    bad = np.zeros(num_vertices, dtype=bool)
    irregular = edges[counts != 2]
    bad[irregular.ravel()] = True
    return bad


def _attrs_or_empty(attrs: np.ndarray | None, num_vertices: int) -> np.ndarray:
    if attrs is None:
        return np.zeros((num_vertices, 0), dtype=np.float32)
    attrs = np.asarray(attrs)
    if attrs.shape[0] != num_vertices:
        raise ValueError(f"attrs must have one row per vertex ({num_vertices}), got {attrs.shape}")
    return attrs


def compact(
    vertices: np.ndarray, faces: np.ndarray, attrs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Drop faces with repeated vertices, duplicate faces and unreferenced vertices."""
    faces = faces[
        (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])
    ]
    if len(faces):
        # Pack each sorted triple into one int64 key (21 bits per index) for a fast unique.
        srt = np.sort(faces, axis=1).astype(np.int64)
        if len(vertices) < (1 << 21):
            key = (srt[:, 0] << 42) | (srt[:, 1] << 21) | srt[:, 2]
            _, first = np.unique(key, return_index=True)
        else:
            _, first = np.unique(srt, axis=0, return_index=True)
        faces = faces[np.sort(first)]
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    new_attrs = None if attrs is None else attrs[used]
    return vertices[used], remap[faces].astype(np.int64), new_attrs


def split_edges(
    vertices: np.ndarray,
    faces: np.ndarray,
    max_length: float,
    attrs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Split every edge longer than ``max_length`` at its midpoint (one pass).

    Faces with one, two or three split edges are cut into two, three or four triangles, so the
    result stays conforming. Returns new ``(vertices, faces, attrs)``.
    """
    num_v = len(vertices)
    edges, face_edges = edges_unique(faces, num_v)
    split = edge_lengths(vertices, edges) > max_length
    n_split = int(split.sum())
    if n_split == 0:
        return vertices.copy(), faces.copy(), None if attrs is None else np.array(attrs)
    a = _attrs_or_empty(attrs, num_v)
    mid_index = np.full(len(edges), -1, dtype=np.int64)
    mid_index[split] = num_v + np.arange(n_split)
    se = edges[split]
    new_vertices = np.concatenate([vertices, 0.5 * (vertices[se[:, 0]] + vertices[se[:, 1]])])
    new_attrs = np.concatenate([a, 0.5 * (a[se[:, 0]] + a[se[:, 1]])])

    fmask = split[face_edges]
    count = fmask.sum(axis=1)
    # Rotate each face so its split pattern is canonical: one split on edge 0, or two splits on
    # edges 0 and 1 (edge 2 unsplit).
    rot = np.zeros(len(faces), dtype=np.int64)
    one = count == 1
    rot[one] = np.argmax(fmask[one], axis=1)
    two = count == 2
    rot[two] = (np.argmin(fmask[two], axis=1) + 1) % 3
    cols = (np.arange(3)[None, :] + rot[:, None]) % 3
    rows = np.arange(len(faces))[:, None]
    v = faces[rows, cols]
    m = mid_index[face_edges[rows, cols]]

    parts = [v[count == 0]]
    v1, m1 = v[one], m[one]
    parts += [
        np.stack([v1[:, 0], m1[:, 0], v1[:, 2]], 1),
        np.stack([m1[:, 0], v1[:, 1], v1[:, 2]], 1),
    ]
    v2, m2 = v[two], m[two]
    parts += [
        np.stack([v2[:, 0], m2[:, 0], m2[:, 1]], 1),
        np.stack([v2[:, 0], m2[:, 1], v2[:, 2]], 1),
        np.stack([m2[:, 0], v2[:, 1], m2[:, 1]], 1),
    ]
    three = count == 3
    v3, m3 = v[three], m[three]
    parts += [
        np.stack([v3[:, 0], m3[:, 0], m3[:, 2]], 1),
        np.stack([m3[:, 0], v3[:, 1], m3[:, 1]], 1),
        np.stack([m3[:, 2], m3[:, 1], v3[:, 2]], 1),
        np.stack([m3[:, 0], m3[:, 1], m3[:, 2]], 1),
    ]
    new_faces = np.concatenate(parts).astype(np.int64)
    return new_vertices, new_faces, None if attrs is None else new_attrs


@numba.njit(cache=True, nogil=True)
def _common_neighbours(edges, num_vertices, pairs):  # pragma: no cover - compiled
    """``(P,)`` int64: how many neighbours (over unique ``edges``) both ends of each pair share."""
    start = np.zeros(num_vertices + 1, np.int64)
    for e in range(edges.shape[0]):
        start[edges[e, 0] + 1] += 1
        start[edges[e, 1] + 1] += 1
    for v in range(num_vertices):
        start[v + 1] += start[v]
    fill = start[:-1].copy()
    ring = np.empty(2 * edges.shape[0], np.int64)
    for e in range(edges.shape[0]):
        a, b = edges[e, 0], edges[e, 1]
        ring[fill[a]] = b
        fill[a] += 1
        ring[fill[b]] = a
        fill[b] += 1
    out = np.zeros(pairs.shape[0], np.int64)
    for p in range(pairs.shape[0]):
        u, w = pairs[p, 0], pairs[p, 1]
        for i in range(start[u], start[u + 1]):
            x = ring[i]
            for j in range(start[w], start[w + 1]):
                if ring[j] == x:
                    out[p] += 1
                    break
    return out


def _independent_min(
    priority: np.ndarray, edges: np.ndarray, num_vertices: int
) -> np.ndarray:
    """``(E,)`` bool: finite-priority edges that beat every candidate edge touching their 1-rings.

    Two chosen edges then never share a vertex, a neighbour or a face, so their operations can be
    applied together. ``priority`` must be unique where finite (lower wins).
    """
    vmin = np.full(num_vertices, np.inf)
    np.minimum.at(vmin, edges[:, 0], priority)
    np.minimum.at(vmin, edges[:, 1], priority)
    ring = vmin.copy()
    np.minimum.at(ring, edges[:, 0], vmin[edges[:, 1]])
    np.minimum.at(ring, edges[:, 1], vmin[edges[:, 0]])
    finite = np.isfinite(priority)
    return finite & (priority <= ring[edges[:, 0]]) & (priority <= ring[edges[:, 1]])


def collapse_edges(
    vertices: np.ndarray,
    faces: np.ndarray,
    min_length: float,
    attrs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Collapse an independent set of edges shorter than ``min_length`` to their midpoints.

    Only interior manifold edges are collapsed, and only when the collapse keeps the mesh
    manifold (the link condition: the ends share exactly the two opposite vertices), leaves every
    vertex with valence >= 3, and turns no neighbouring face over. Returns new arrays.
    """
    num_v = len(vertices)
    a = _attrs_or_empty(attrs, num_v)
    edges, face_edges = edges_unique(faces, num_v)
    counts = np.bincount(face_edges.ravel(), minlength=len(edges))
    length = edge_lengths(vertices, edges)
    bad_vertex = _irregular_vertices(num_v, edges, counts)
    cand = (
        (length < min_length) & (counts == 2) & ~bad_vertex[edges[:, 0]] & ~bad_vertex[edges[:, 1]]
    )
    if not cand.any():
        return vertices.copy(), faces.copy(), None if attrs is None else np.array(attrs)
    # Ties broken by index so that priorities are unique.
    priority = np.where(cand, length + 1e-12 * np.arange(len(edges)) / len(edges), np.inf)
    chosen = np.flatnonzero(_independent_min(priority, edges, num_v))

    valence = np.bincount(edges.ravel(), minlength=num_v)
    ce = edges[chosen]
    common = _common_neighbours(edges, num_v, ce)
    ok = (common == 2) & (valence[ce[:, 0]] + valence[ce[:, 1]] - 4 >= 3)
    # Opposite vertices of the chosen edges lose one edge each; keep them at valence >= 3.
    is_chosen = np.zeros(len(edges), dtype=bool)
    is_chosen[chosen] = True
    slot_f, slot_k = np.nonzero(is_chosen[face_edges])
    opposite = faces[slot_f, (slot_k + 2) % 3]
    order = np.full(len(edges), -1, dtype=np.int64)
    order[chosen] = np.arange(len(chosen))
    low_opp = valence[opposite] <= 3
    ok[np.unique(order[face_edges[slot_f, slot_k]][low_opp])] = False

    # Refuse collapses that would turn a surviving neighbouring face over.
    collapse_id = np.full(num_v, -1, dtype=np.int64)
    collapse_id[ce[:, 0]] = np.arange(len(chosen))
    collapse_id[ce[:, 1]] = np.arange(len(chosen))
    target = 0.5 * (vertices[ce[:, 0]] + vertices[ce[:, 1]])
    fid = collapse_id[faces]  # (F, 3); at most one collapse touches any face
    touched = (fid >= 0).sum(axis=1)
    moved = (touched == 1)
    mf = faces[moved]
    mid = fid[moved]
    which = mid.max(axis=1)
    new_pos = vertices[mf].copy()
    hit = mid >= 0
    new_pos[hit] = target[mid[hit]]
    old_n = face_normals(vertices, mf)
    corners = np.arange(3 * len(mf)).reshape(-1, 3)
    new_n, new_area = face_normals_and_areas(new_pos.reshape(-1, 3), corners)
    flips = (np.sum(old_n * new_n, axis=1) < COLLAPSE_MIN_NORMAL_COS) | (
        new_area <= MIN_FACE_AREA
    )
    ok[np.unique(which[flips])] = False

    ce = ce[ok]
    if len(ce) == 0:
        return vertices.copy(), faces.copy(), None if attrs is None else np.array(attrs)
    new_vertices = vertices.copy()
    new_vertices[ce[:, 0]] = 0.5 * (vertices[ce[:, 0]] + vertices[ce[:, 1]])
    new_attrs = np.array(a)
    new_attrs[ce[:, 0]] = 0.5 * (a[ce[:, 0]] + a[ce[:, 1]])
    rep = np.arange(num_v)
    rep[ce[:, 1]] = ce[:, 0]
    v, f, at = compact(new_vertices, rep[faces], new_attrs)
    return v, f, None if attrs is None else at


def flip_edges(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip an independent set of edges where that brings valences closer to 6; returns faces.

    Only interior, consistently oriented manifold edges between faces that are nearly coplanar
    (dihedral cosine above :data:`FLIP_MIN_DIHEDRAL_COS`) are flipped, and never onto an edge that
    already exists. Vertices stay as they are, so only the new ``(F, 3)`` faces are returned.
    """
    num_v = len(vertices)
    edges, face_edges = edges_unique(faces, num_v)
    counts, first_slot, second_slot = _edge_face_slots(face_edges.ravel(), len(edges))
    bad_vertex = _irregular_vertices(num_v, edges, counts)
    valence = np.bincount(edges.ravel(), minlength=num_v)

    interior = np.flatnonzero(
        (counts == 2) & ~bad_vertex[edges[:, 0]] & ~bad_vertex[edges[:, 1]]
    )
    if len(interior) == 0:
        return faces.copy()
    s1 = first_slot[interior]
    s2 = second_slot[interior]
    f1, k1 = s1 // 3, s1 % 3
    f2, k2 = s2 // 3, s2 % 3
    a = faces[f1, k1]
    b = faces[f1, (k1 + 1) % 3]
    c = faces[f1, (k1 + 2) % 3]
    d = faces[f2, (k2 + 2) % 3]
    consistent = (faces[f2, k2] == b) & (faces[f2, (k2 + 1) % 3] == a) & (c != d)

    def dev(x: np.ndarray) -> np.ndarray:
        return (x - TARGET_VALENCE) ** 2

    va, vb, vc, vd = valence[a], valence[b], valence[c], valence[d]
    before = dev(va) + dev(vb) + dev(vc) + dev(vd)
    after = dev(va - 1) + dev(vb - 1) + dev(vc + 1) + dev(vd + 1)
    gain = before - after

    # Geometry only for the flips that would help: most edges already have a good valence.
    pre = np.flatnonzero(consistent & (gain > 0))
    if len(pre) == 0:
        return faces.copy()
    pa, pb, pc, pd = a[pre], b[pre], c[pre], d[pre]
    n_f1 = face_normals(vertices, faces[f1[pre]])
    n_f2 = face_normals(vertices, faces[f2[pre]])
    dihedral = np.sum(n_f1 * n_f2, axis=1)
    n1, area1 = face_normals_and_areas(vertices, np.stack([pa, pd, pc], 1))
    n2, area2 = face_normals_and_areas(vertices, np.stack([pd, pb, pc], 1))
    avg = n_f1 + n_f2
    geometric = (
        (dihedral > FLIP_MIN_DIHEDRAL_COS)
        & (np.sum(n1 * n2, axis=1) > FLIP_MIN_DIHEDRAL_COS)
        & (np.sum(n1 * avg, axis=1) > 0)
        & (np.sum(n2 * avg, axis=1) > 0)
        & (area1 > MIN_FACE_AREA)
        & (area2 > MIN_FACE_AREA)
    )
    lo, hi = np.minimum(c, d), np.maximum(c, d)
    new_key = lo * np.int64(num_v) + hi
    # edges_unique returns the edges sorted, so their keys are too: a binary search per flip
    existing = edges[:, 0] * np.int64(num_v) + edges[:, 1]
    at = np.minimum(np.searchsorted(existing, new_key[pre]), len(existing) - 1)
    fresh = existing[at] != new_key[pre]
    cand = np.zeros(len(interior), dtype=bool)
    cand[pre] = geometric & fresh
    if not cand.any():
        return faces.copy()
    new1 = np.stack([a, d, c], 1)
    new2 = np.stack([d, b, c], 1)

    # A flip changes the valence of its four vertices; flipping two quads that share a vertex in
    # one pass overshoots, so each vertex takes part in at most one flip (the best-scoring).
    score = np.where(cand, -gain + 1e-6 * np.arange(len(interior)) / len(interior), np.inf)
    best = np.full(num_v, np.inf)
    for x in (a, b, c, d):
        np.minimum.at(best, x, score)
    chosen = cand.copy()
    for x in (a, b, c, d):
        chosen &= score <= best[x]
    # Two flips could create the same new edge; keep the first.
    idx = np.flatnonzero(chosen)
    _, first = np.unique(new_key[idx], return_index=True)
    idx = idx[np.sort(first)]

    new_faces = faces.copy()
    new_faces[f1[idx]] = new1[idx]
    new_faces[f2[idx]] = new2[idx]
    return new_faces


def tangential_smooth(
    vertices: np.ndarray, faces: np.ndarray, weight: float = 0.5
) -> np.ndarray:
    """Move vertices toward their neighbours' centroid within their tangent plane.

    Relocation evens out triangle shapes without shrinking the surface: the normal component of
    the uniform Laplacian is removed. Irregular (boundary, non-manifold) vertices and vertices on
    creases stay put.
    Returns new ``(V, 3)`` vertices.
    """
    num_v = len(vertices)
    edges, face_edges = edges_unique(faces, num_v)
    counts = np.bincount(face_edges.ravel(), minlength=len(edges))
    bad = _irregular_vertices(num_v, edges, counts)
    acc = _scatter_sum(edges.ravel(), vertices[edges[:, ::-1].ravel()], num_v)
    deg = np.bincount(edges.ravel(), minlength=num_v)
    centroid = acc / np.maximum(deg, 1)[:, None]
    delta = centroid - vertices
    n = vertex_normals(vertices, faces)
    delta -= np.sum(delta * n, axis=1, keepdims=True) * n
    # Vertices on a crease (a face turned more than CREASE_COS from the vertex normal) stay put:
    # sliding them within an averaged tangent plane would round the crease off.
    fn = face_normals(vertices, faces)
    corner_cos = np.sum(fn[:, None, :] * n[faces], axis=2).ravel()
    min_cos = np.full(num_v, np.inf)
    np.minimum.at(min_cos, faces.ravel(), corner_cos)
    delta[bad | (deg == 0) | (min_cos < CREASE_COS)] = 0.0
    return vertices + weight * delta


def remesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    target_length: float,
    attrs: np.ndarray | None = None,
    *,
    smooth: float = 0.5,
    split_passes: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One round of continuous remeshing toward ``target_length``: split, collapse, flip, relocate.

    Returns new ``(vertices, faces, attrs)``; ``attrs`` ``(V, K)`` follow the vertices.
    """
    v, f, at = np.asarray(vertices), np.asarray(faces, dtype=np.int64), attrs
    for _ in range(split_passes):
        v, f, at = split_edges(v, f, SPLIT_RATIO * target_length, at)
    v, f, at = collapse_edges(v, f, COLLAPSE_RATIO * target_length, at)
    f = flip_edges(v, f)
    if smooth > 0:
        v = tangential_smooth(v, f, smooth)
    return v, f, at


def remesh_to(
    vertices: np.ndarray,
    faces: np.ndarray,
    target_length: float,
    iterations: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Several remeshing rounds (a few extra split passes for long edges) with no optimisation."""
    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    v, f, _ = compact(v, f)
    for _ in range(iterations):
        v, f, _ = remesh(v, f, target_length, split_passes=3)
    return v, f
