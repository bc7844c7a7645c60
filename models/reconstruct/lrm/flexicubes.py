"""Surface extraction on a regular grid: FlexiCubes, with marching tetrahedra as the fallback.

Written from the FlexiCubes paper (Shen et al., SIGGRAPH 2023): a dual method on a deformable
cube grid. Each cube that the surface crosses gets one dual vertex per surface patch in it
(the Dual Marching Cubes grouping of its crossing edges); the vertex is the beta-weighted mean
of its edges' crossing points, each crossing point being the zero of the alpha-scaled SDF on
that edge; every crossing grid edge yields a quad joining the dual vertices of its four cubes,
split into two triangles along the diagonal whose gamma product is larger.

Conventions shared with the released weights (they index the network's outputs):

- Grid vertices ``(R+1)^3`` are ordered x-major: index ``ix*(R+1)^2 + iy*(R+1) + iz``; cubes
  ``R^3`` likewise (``cx*R^2 + cy*R + cz``).
- Corner ``k`` of a cube sits at offset ``(k & 1, k >> 1 & 1, k >> 2 & 1)``.
- The 12 edges, in the order of beta's columns: :data:`CUBE_EDGES`.
- Inside is ``sdf < 0``; faces wind counter-clockwise seen from outside (outward normals).

The patch grouping comes from the cube's faces: on each face the crossing edges pair up, and
edges linked through faces form one patch. On an ambiguous face (two diagonal inside corners)
the pairing cuts off each inside corner by default; where that would put both arcs of the face
into one patch on both sides of it (a dual edge shared by four quads), the face's pairing is
flipped for both cubes. A face is shared by just those two cubes, so neighbours always agree
and the quads close up into a watertight surface. This replaces the reference code's case-table
disambiguation; only the corner and edge orders above, which the weights depend on, are shared
with it, and every table here is derived at run time from the rules above.
"""

from __future__ import annotations

import functools
from itertools import permutations

import numpy as np
import torch

#: Cube edges as corner pairs, in the order of the network's 12 beta weights.
CUBE_EDGES = (
    (0, 1), (1, 5), (4, 5), (0, 4), (2, 3), (3, 7), (6, 7), (2, 6), (2, 0), (3, 1), (7, 5), (6, 4),
)  # fmt: skip
#: Corners are ``inside`` when the SDF is below zero; grid-boundary vertices are pushed to this.
BOUNDARY_SDF = 1e-4


def _corner_offset(k: int) -> tuple[int, int, int]:
    return (k & 1, (k >> 1) & 1, (k >> 2) & 1)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    parent[_find(parent, i)] = _find(parent, j)


#: Local faces ``axis * 2 + side``: the edges on each face.
FACE_EDGES = tuple(
    tuple(e for e, (a, b) in enumerate(CUBE_EDGES)
          if _corner_offset(a)[axis] == side and _corner_offset(b)[axis] == side)
    for axis in range(3) for side in (0, 1)
)


def _build_patch_tables() -> tuple[np.ndarray, np.ndarray]:
    """Patch grouping of every corner case under every choice of ambiguous-face pairing.

    Index ``[case, options]``: ``case`` has bit k set when corner k is inside; bit f of
    ``options`` picks the pairing on local face f when it is ambiguous (0: each inside corner
    cut off on its own, 1: each outside corner). Returns ``patch`` ``(256, 64, 12)`` int8 (patch
    id of each crossing edge, -1 elsewhere) and ``twice`` ``(256, 64, 6)`` bool (face f is
    ambiguous and both its arcs belong to one patch).
    """
    patch = np.full((256, 64, 12), -1, dtype=np.int8)
    twice = np.zeros((256, 64, 6), dtype=bool)
    for case in range(256):
        inside = [(case >> k) & 1 for k in range(8)]
        crossing = [inside[a] != inside[b] for a, b in CUBE_EDGES]
        for options in range(64):
            parent = list(range(12))
            arcs: dict[int, list[int]] = {}
            for f, face_edges in enumerate(FACE_EDGES):
                hits = [e for e in face_edges if crossing[e]]
                if len(hits) == 2:
                    _union(parent, *hits)
                elif len(hits) == 4:
                    cut = 1 - ((options >> f) & 1)  # the corners cut off: inside (1) or outside
                    corners = {c for e in face_edges for c in CUBE_EDGES[e]}
                    pairs = [[e for e in face_edges if c in CUBE_EDGES[e]]
                             for c in sorted(corners) if inside[c] == cut]
                    for pair in pairs:
                        _union(parent, *pair)
                    arcs[f] = [pair[0] for pair in pairs]
            roots: dict[int, int] = {}
            for e in range(12):
                if crossing[e]:
                    patch[case, options, e] = roots.setdefault(_find(parent, e), len(roots))
            for f, (e1, e2) in arcs.items():
                twice[case, options, f] = _find(parent, e1) == _find(parent, e2)
    return patch, twice


@functools.cache
def patch_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(patch (256*64, 12) int64, count (256*64,) int64, twice (256*64, 6) bool)`` on the CPU,
    indexed by ``case * 64 + options`` (built on first use, about a second)."""
    patch, twice = _build_patch_tables()
    patch_t = torch.from_numpy(patch.reshape(-1, 12).astype(np.int64))
    return patch_t, patch_t.max(dim=1).values + 1, torch.from_numpy(twice.reshape(-1, 6))


def _edge_index(a: int, b: int) -> int:
    for i, (p, q) in enumerate(CUBE_EDGES):
        if {p, q} == {a, b}:
            return i
    raise ValueError((a, b))


LOCAL_EDGE = np.zeros((3, 2, 2), dtype=np.int64)
for _axis in range(3):
    for _db in (0, 1):
        for _dc in (0, 1):
            _start = (_db << ((_axis + 1) % 3)) | (_dc << ((_axis + 2) % 3))
            LOCAL_EDGE[_axis, _db, _dc] = _edge_index(_start, _start | (1 << _axis))


def grid_vertices(res: int, scale: float = 1.0) -> torch.Tensor:
    """``((R+1)^3, 3)`` float32 vertices of a ``res^3``-cube grid over ``[-scale/2, scale/2]^3``."""
    t = torch.linspace(-0.5, 0.5, res + 1) * scale
    return torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1).reshape(-1, 3)


def grid_cubes(res: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(R^3, 8)`` int64 corner vertex indices of every cube, corners in FlexiCubes order."""
    n = res + 1
    c = torch.arange(res, device=device)
    cx, cy, cz = torch.meshgrid(c, c, c, indexing="ij")
    base = (cx * n * n + cy * n + cz).reshape(-1, 1)
    offs = torch.tensor([dx * n * n + dy * n + dz for dx, dy, dz in map(_corner_offset, range(8))],
                        device=device)
    return base + offs


def _boundary_mask(res: int, device: torch.device | str) -> torch.Tensor:
    i = torch.arange(res + 1, device=device)
    edge = (i == 0) | (i == res)
    return (edge[:, None, None] | edge[None, :, None] | edge[None, None, :]).reshape(-1)


def prepare_sdf(sdf: torch.Tensor, res: int, close_boundary: bool = True) -> torch.Tensor:
    """The SDF the extractors use: with ``close_boundary``, grid-boundary vertices are outside.

    That keeps every crossing edge interior (four cubes around it), so the surface is closed even
    where the prediction touches the grid's walls.
    """
    sdf = sdf.reshape(-1)
    if not close_boundary:
        return sdf
    boundary = _boundary_mask(res, sdf.device)
    return torch.where(boundary, sdf.clamp_min(BOUNDARY_SDF), sdf)


def cube_cases(sdf: torch.Tensor, res: int) -> torch.Tensor:
    """``(R^3,)`` int64 corner-occupancy case of every cube (bit k set: corner k inside)."""
    inside = (sdf.reshape(-1) < 0).long()
    corners = inside[grid_cubes(res, sdf.device)]
    return (corners << torch.arange(8, device=sdf.device)).sum(dim=1)


def surface_cubes(sdf: torch.Tensor, res: int) -> torch.Tensor:
    """``(S,)`` int64 ids of the cubes the surface crosses (mixed corner signs), ascending."""
    case = cube_cases(sdf, res)
    return torch.nonzero((case > 0) & (case < 255)).reshape(-1)


def normalise_weights(
    raw: torch.Tensor, weight_scale: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network outputs ``(S, 21)`` -> beta ``(S, 12)``, alpha ``(S, 8)``, gamma ``(S,)``.

    beta and alpha lie in ``1 +- weight_scale`` (tanh); gamma in ``(1-w)/2 + w * sigmoid``.
    """
    beta = torch.tanh(raw[:, :12]) * weight_scale + 1.0
    alpha = torch.tanh(raw[:, 12:20]) * weight_scale + 1.0
    gamma = torch.sigmoid(raw[:, 20]) * weight_scale + (1.0 - weight_scale) / 2.0
    return beta, alpha, gamma


def flexicubes(
    vertices: torch.Tensor,
    sdf: torch.Tensor,
    res: int,
    *,
    cube_ids: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    close_boundary: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Extract the zero level set of ``sdf`` on a (possibly deformed) ``res^3`` cube grid.

    ``vertices``: ``((R+1)^3, 3)`` float grid vertex positions (x-major order, any frame);
    ``sdf``: ``((R+1)^3,)`` float, negative inside. ``cube_ids``: the surface cubes the weights
    refer to (default :func:`surface_cubes` of the prepared SDF; pass the same ids you computed
    weights for). ``beta`` ``(S, 12)``, ``alpha`` ``(S, 8)``, ``gamma`` ``(S,)``: normalised
    FlexiCubes weights of those cubes (see :func:`normalise_weights`); all-ones when omitted,
    which gives plain Dual Marching Cubes with linear edge crossings.

    Returns ``(vertices (N, 3) float, faces (F, 3) int64)`` in the frame of ``vertices``,
    outward-facing. Empty arrays when the surface misses the grid.
    """
    device, dtype = vertices.device, vertices.dtype
    s = prepare_sdf(sdf.to(dtype), res, close_boundary)
    case = cube_cases(s, res)
    if cube_ids is None:
        cube_ids = torch.nonzero((case > 0) & (case < 255)).reshape(-1)
    else:
        cube_ids = cube_ids.to(device)
    n_surf = cube_ids.shape[0]
    empty = (torch.zeros(0, 3, dtype=dtype, device=device),
             torch.zeros(0, 3, dtype=torch.long, device=device))
    if n_surf == 0:
        return empty
    if beta is None:
        beta = torch.ones(n_surf, 12, dtype=dtype, device=device)
    if alpha is None:
        alpha = torch.ones(n_surf, 8, dtype=dtype, device=device)

    # 1. patches of each surface cube and a global id per dual vertex
    surf_case = case[cube_ids]
    table = surf_case * 64 + _face_options(surf_case, cube_ids, res)
    patch_table, count_table, _ = (x.to(device) for x in patch_tables())
    patch = patch_table[table]  # (S, 12)
    n_patch = count_table[table]  # (S,)
    first = torch.cumsum(n_patch, 0) - n_patch
    n_dual = int(n_patch.sum())
    if n_dual == 0:
        return empty

    # 2. alpha-weighted crossing point of every crossing edge of every surface cube
    corners = grid_cubes(res, device)[cube_ids]  # (S, 8)
    ends = torch.as_tensor(CUBE_EDGES, device=device)  # (12, 2)
    va, vb = corners[:, ends[:, 0]], corners[:, ends[:, 1]]  # (S, 12)
    sa = s[va] * alpha[:, ends[:, 0]]
    sb = s[vb] * alpha[:, ends[:, 1]]
    crossing = patch >= 0
    denom = torch.where(crossing, sa - sb, torch.ones_like(sa))
    point = (sa[..., None] * vertices[vb] - sb[..., None] * vertices[va]) / denom[..., None]

    # 3. dual vertex = beta-weighted mean of its patch's crossing points
    dual_of_edge = torch.where(crossing, first[:, None] + patch, torch.zeros_like(patch))
    w = beta * crossing.to(dtype)
    acc = torch.zeros(n_dual, 3, dtype=dtype, device=device)
    acc.index_add_(0, dual_of_edge.reshape(-1), (point * w[..., None]).reshape(-1, 3))
    wsum = torch.zeros(n_dual, dtype=dtype, device=device)
    wsum.index_add_(0, dual_of_edge.reshape(-1), w.reshape(-1))
    dual = acc / wsum.clamp_min(1e-12)[:, None]

    # 4. one quad per crossing grid edge with four cubes around it
    slot = torch.full((res**3,), -1, dtype=torch.long, device=device)
    slot[cube_ids] = torch.arange(n_surf, device=device)
    if (slot[(case > 0) & (case < 255)] < 0).any():
        raise ValueError("cube_ids must list every surface cube of the (boundary-closed) SDF")
    n = res + 1
    inside = (s < 0).reshape(n, n, n)
    quads, quad_slots, flips = [], [], []
    local_edge = torch.as_tensor(LOCAL_EDGE, device=device)
    ring = ((-1, -1), (0, -1), (0, 0), (-1, 0))  # counter-clockwise seen from +axis
    for axis in range(3):
        lo = inside.narrow(axis, 0, res)
        hi = inside.narrow(axis, 1, res)
        cross = lo != hi
        # keep edges with four cubes: the other two coordinates strictly inside the grid
        for other in ((axis + 1) % 3, (axis + 2) % 3):
            keep = torch.zeros(cross.shape[other], dtype=torch.bool, device=device)
            keep[1:-1] = True
            shape = [1, 1, 1]
            shape[other] = -1
            cross = cross & keep.view(shape)
        idx = torch.nonzero(cross)  # (Q, 3) lower-end vertex coords
        if idx.shape[0] == 0:
            continue
        b, c = (axis + 1) % 3, (axis + 2) % 3
        ring_ids, ring_slots = [], []
        for ob, oc in ring:
            cube = idx.clone()
            cube[:, b] += ob
            cube[:, c] += oc
            sl = slot[cube[:, 0] * res * res + cube[:, 1] * res + cube[:, 2]]
            ring_ids.append(first[sl] + patch[sl, local_edge[axis, -ob, -oc]])
            ring_slots.append(sl)
        quads.append(torch.stack(ring_ids, dim=1))
        quad_slots.append(torch.stack(ring_slots, dim=1))
        # normal along +axis when the lower end is inside; otherwise reverse the ring
        flips.append(~inside[idx[:, 0], idx[:, 1], idx[:, 2]])
    if not quads:
        return empty
    quad = torch.cat(quads)
    flip = torch.cat(flips)
    quad = torch.where(flip[:, None], quad.flip(1), quad)

    # 5. split quads: along the diagonal with the larger gamma product (shorter one without)
    if gamma is not None:
        g = gamma[torch.cat(quad_slots)]
        g = torch.where(flip[:, None], g.flip(1), g)
        diag02 = g[:, 0] * g[:, 2] >= g[:, 1] * g[:, 3]
    else:
        p = dual[quad]
        diag02 = (p[:, 0] - p[:, 2]).norm(dim=1) <= (p[:, 1] - p[:, 3]).norm(dim=1)
    tri_a = torch.where(diag02[:, None], quad[:, [0, 1, 2]], quad[:, [0, 1, 3]])
    tri_b = torch.where(diag02[:, None], quad[:, [0, 2, 3]], quad[:, [1, 2, 3]])
    faces = torch.cat([tri_a, tri_b])
    return _compact(dual, faces)


#: Rounds of flipping ambiguous-face pairings; each round fixes the faces it finds, and a
#: flip only changes the two cubes on that face, so one or two rounds suffice in practice.
FACE_FLIP_ROUNDS = 4


def _face_options(case: torch.Tensor, cube_ids: torch.Tensor, res: int) -> torch.Tensor:
    """``(S,)`` int64 pairing choices (6 bits) of the surface cubes' faces.

    An ambiguous face whose two arcs belong to one patch on *both* sides would give a dual edge
    shared by four quads. Flipping that face's pairing (it is shared by exactly those two cubes,
    so they stay consistent) splits the patches; repeat for faces the flips expose.
    """
    device = case.device
    _, _, twice_table = (x.to(device) for x in patch_tables())
    n = res + 1
    cube = torch.stack([cube_ids // (res * res), cube_ids // res % res, cube_ids % res], dim=1)
    face_ids = []
    for axis in range(3):
        for side in (0, 1):
            pos = cube.clone()
            pos[:, axis] += side
            face_ids.append(axis * n**3 + pos[:, 0] * n * n + pos[:, 1] * n + pos[:, 2])
    face_ids = torch.stack(face_ids, dim=1)  # (S, 6) global face ids
    flipped = torch.zeros(3 * n**3, dtype=torch.long, device=device)
    shifts = torch.arange(6, device=device)
    options = torch.zeros_like(case)
    for _ in range(FACE_FLIP_ROUNDS):
        options = (flipped[face_ids] << shifts).sum(dim=1)
        twice = twice_table[case * 64 + options]  # (S, 6)
        hits = torch.zeros_like(flipped).index_add_(
            0, face_ids[twice], torch.ones_like(face_ids[twice])
        )
        bad = hits >= 2
        if not bad.any():
            break
        flipped = torch.where(bad, 1 - flipped, flipped)
    return options


def _compact(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop vertices no face uses; renumber faces."""
    used = torch.zeros(vertices.shape[0], dtype=torch.bool, device=vertices.device)
    used[faces.reshape(-1)] = True
    new_id = torch.cumsum(used.long(), 0) - 1
    return vertices[used], new_id[faces]


#: The six tetrahedra of a cube along its 0-7 diagonal (Kuhn/Freudenthal split: every cube is
#: split the same way, so neighbouring cubes share their face triangulations).
CUBE_TETS = tuple(
    (0, 1 << p[0], (1 << p[0]) | (1 << p[1]), 7) for p in permutations(range(3))
)
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _build_tet_table() -> np.ndarray:
    """``(16, 2, 3)``: tet-edge indices of up to two triangles per inside-corner case (-1: none)."""
    table = np.full((16, 2, 3), -1, dtype=np.int64)
    for case in range(1, 15):
        inside = [k for k in range(4) if case >> k & 1]
        outside = [k for k in range(4) if not case >> k & 1]
        if len(inside) in (1, 3):
            odd, rest = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[case, 0] = [TET_EDGES.index(tuple(sorted((odd, r)))) for r in rest]
        else:
            (a, b), (c, d) = inside, outside
            ring = [TET_EDGES.index(tuple(sorted(p))) for p in ((a, c), (a, d), (b, d), (b, c))]
            table[case, 0] = [ring[0], ring[1], ring[2]]
            table[case, 1] = [ring[0], ring[2], ring[3]]
    return table


TET_TABLE = _build_tet_table()


def marching_tetrahedra(
    vertices: torch.Tensor, sdf: torch.Tensor, res: int, *, close_boundary: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero level set of ``sdf`` by marching tetrahedra on the cube grid (6 tets per cube).

    Same inputs and frames as :func:`flexicubes` without weights; returns ``(vertices (N, 3),
    faces (F, 3) int64)``, outward-facing and watertight when ``close_boundary``. Vertices lie
    on grid and cube-diagonal edges (linear interpolation), so it needs no case tables beyond
    the 16 tetrahedron cases and never produces a non-manifold edge.
    """
    device, dtype = vertices.device, vertices.dtype
    s = prepare_sdf(sdf.to(dtype), res, close_boundary)
    inside = s < 0
    cubes = grid_cubes(res, device)
    corner_case = (inside[cubes].long() << torch.arange(8, device=device)).sum(1)
    cubes = cubes[(corner_case > 0) & (corner_case < 255)]
    tets = cubes[:, torch.as_tensor(CUBE_TETS, device=device)].reshape(-1, 4)
    case = (inside[tets].long() << torch.arange(4, device=device)).sum(1)
    keep = (case > 0) & (case < 15)
    tets, case = tets[keep], case[keep]
    if tets.shape[0] == 0:
        return (torch.zeros(0, 3, dtype=dtype, device=device),
                torch.zeros(0, 3, dtype=torch.long, device=device))
    ends = torch.as_tensor(TET_EDGES, device=device)
    ea, eb = tets[:, ends[:, 0]], tets[:, ends[:, 1]]  # (T, 6) vertex ids
    key = torch.minimum(ea, eb) * vertices.shape[0] + torch.maximum(ea, eb)
    table = torch.as_tensor(TET_TABLE, device=device)[case]  # (T, 2, 3)
    valid = table[:, :, 0] >= 0
    tri_edges = table[valid]  # (F, 3) local tet edges
    tri_tet = torch.nonzero(valid)[:, 0]
    tri_keys = key[tri_tet[:, None], tri_edges]
    uniq, faces = torch.unique(tri_keys.reshape(-1), return_inverse=True)
    faces = faces.reshape(-1, 3)
    a, b = uniq // vertices.shape[0], uniq % vertices.shape[0]
    sa, sb = s[a], s[b]
    verts = (sa[:, None] * vertices[b] - sb[:, None] * vertices[a]) / (sa - sb)[:, None]
    # orient: the normal must point from the inside end to the outside end of a crossing edge.
    # Judge it on the edges' midpoints, whose triangle is never degenerate (a crossing point may
    # sit on a grid vertex when the SDF is exactly zero there) and has the same orientation.
    fa, fb = a[faces[:, 0]], b[faces[:, 0]]
    out_dir = torch.where(inside[fa][:, None], vertices[fb] - vertices[fa],
                          vertices[fa] - vertices[fb])
    p = ((vertices[a] + vertices[b]) / 2.0)[faces]
    normal = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=1)
    wrong = (normal * out_dir).sum(1) < 0
    faces = torch.where(wrong[:, None], faces.flip(1), faces)
    return verts, faces


#: Extractors by name; ``flexicubes`` takes the network's weights, the fallback ignores them.
EXTRACTORS = {"flexicubes": flexicubes, "marching_tetrahedra": marching_tetrahedra}
