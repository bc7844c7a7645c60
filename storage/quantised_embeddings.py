"""Unit embeddings kept as int8 beside their float32 copy, for a cheap first pass of a search.

A search over 100,000 entries reads their ``(N, 384)`` float32 unit embeddings whole (150 MB)
for one query: memory bandwidth, not arithmetic, sets its cost. The same rows as int8 (one
float32 scale per row) are a quarter of the bytes, and torch multiplies int8 by int8 into int32
with the CPU's integer dot-product instructions, exactly (``torch._int_mm``; 4 ms of CPU for
100,000 rows on one thread, against 11-16 ms for the float32 product). The cosines it gives
differ from the float32 ones by the rounding of the rows and of the query (about 3e-4 for
384-wide unit vectors, a small fraction of the gap between the tenth and the hundredth best
entry), so :mod:`storage.search_index` ranks its best candidates again in float32.

Without torch's int8 product (a build without it, or a shape it refuses), numpy sums the same
integers: slower, equal.

The rows' signs, one bit per component (48 bytes a row), give a cheaper pass still: the number
of components whose sign differs from the query's (the Hamming distance) falls as the cosine
rises, so the rows nearest by sign are a shortlist that the int8 pass then ranks
(:meth:`QuantisedRows.sign_shortlist`, 0.4 ms for 100,000 rows against 4-6 ms for the int8
pass). How often the shortlist holds the true nearest rows depends on the data: text embeddings
cluster and it nearly always does, uniformly random vectors do not (recall@10 0.71 with 2,000
of 100,000). :meth:`QuantisedRows.sign_recall` measures it on the rows themselves, so a caller
can use the shortlist only where it holds.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("foundry3d.search")

INT8_MAX = 127
"""Largest magnitude of a quantised component (symmetric: -127..127)."""
SIGN_PROBES = 32
"""Rows used as queries by :meth:`QuantisedRows.sign_recall`."""


def quantise(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, D)`` float32 rows -> (``(n, D)`` int8 codes, ``(n,)`` float32 scales) with
    ``codes[i] * scales[i] ~= rows[i]`` (each row's largest component maps to +-127; a zero
    row gets zero codes)."""
    rows = np.asarray(rows, dtype=np.float32)
    peak = np.abs(rows).max(axis=1) if rows.size else np.zeros(len(rows), dtype=np.float32)
    scales = np.where(peak > 0, peak / np.float32(INT8_MAX), np.float32(1.0)).astype(np.float32)
    codes = np.rint(rows / scales[:, None]).astype(np.int8)
    return codes, scales


class QuantisedRows:
    """An int8 copy of the first rows of one float32 ``(capacity, D)`` buffer, grown by
    appending as more of the buffer's rows are filled.

    Not locked: the caller extends it from one thread at a time. Rows below :attr:`count` are
    never rewritten, so a search may score ``count`` rows while another thread extends it.
    """

    def __init__(self, source: np.ndarray) -> None:
        """``source``: the float32 buffer whose rows are quantised (kept, not copied)."""
        self.source = source
        self.codes = np.zeros(source.shape, dtype=np.int8)
        self.scales = np.zeros(len(source), dtype=np.float32)
        # Sign bits, 64 components per word (the width rounded up to whole words).
        self.signs = np.zeros((len(source), -(-source.shape[1] // 64)), dtype=np.uint64)
        self.count = 0

    def extend(self, count: int) -> None:
        """Quantise the source's rows ``[self.count, count)``."""
        if count > len(self.source):
            raise ValueError(f"{count} rows asked of a buffer of {len(self.source)}")
        if count <= self.count:
            return
        codes, scales = quantise(self.source[self.count : count])
        self.codes[self.count : count], self.scales[self.count : count] = codes, scales
        self.signs[self.count : count] = sign_words(self.source[self.count : count])
        self.count = count

    def cosines(self, query: np.ndarray, count: int) -> np.ndarray:
        """Approximate dot products of the first ``count`` rows with ``query`` (``(D,)``
        float32): ``(count,)`` float32; for 384-wide unit rows and query, off the float32 ones
        by about 3e-4 (standard deviation; under 3e-3 over 5,000 random rows)."""
        if count > self.count:
            raise ValueError(f"{count} rows scored, {self.count} quantised")
        query_codes, query_scale = quantise(np.asarray(query, dtype=np.float32)[None])
        dots = int8_dot(self.codes[:count], query_codes[0])
        return dots.astype(np.float32) * (self.scales[:count] * query_scale[0])

    def cosines_of(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """:meth:`cosines` of the given rows only (``(k,)`` indices below :attr:`count`)."""
        query_codes, query_scale = quantise(np.asarray(query, dtype=np.float32)[None])
        dots = int8_dot(self.codes[rows], query_codes[0])
        return dots.astype(np.float32) * (self.scales[rows] * query_scale[0])


    def sign_shortlist(self, query: np.ndarray, count: int, size: int,
                       excluded: np.ndarray | None = None) -> np.ndarray:
        """Rows (among the first ``count``) of the ``size`` nearest to ``query`` (``(D,)``
        float32) by the signs of their components (fewest differing signs; ties at the cut
        in row order), ascending; ``excluded``: an optional ``(count,)`` bool mask of rows
        never chosen (e.g. rows without an embedding). About 0.4 ms for 100,000 rows."""
        if count > self.count:
            raise ValueError(f"{count} rows scored, {self.count} quantised")
        if size >= count:
            return np.arange(count)
        from storage.sign_kernel import nearest_by_sign

        mask = np.zeros(0, dtype=bool) if excluded is None else np.asarray(excluded, dtype=bool)
        return nearest_by_sign(self.signs[:count], sign_words(query[None])[0], size, mask)

    def sign_recall(self, count: int, size: int, k: int = 10,
                    probes: int = SIGN_PROBES) -> float:
        """Share of the ``k`` best rows by int8 cosine that a ``size``-row sign shortlist holds,
        averaged over ``probes`` of the first ``count`` rows taken as queries (evenly spaced;
        each probe's own row left out of both). 1.0 when ``size + 1 >= count``."""
        if size + 1 >= count:
            return 1.0
        found = 0
        chosen = np.unique(np.linspace(0, count - 1, probes).astype(np.intp))
        for row in chosen:
            query = self.codes[row].astype(np.float32) * self.scales[row]
            cosines = self.cosines(query, count)
            cosines[row] = -np.inf
            best = np.argpartition(-cosines, k)[:k]
            excluded = np.zeros(count, dtype=bool)
            excluded[row] = True
            shortlist = self.sign_shortlist(query, count, size, excluded)
            found += np.isin(best, shortlist).sum()
        return float(found) / (k * len(chosen))


def sign_words(rows: np.ndarray) -> np.ndarray:
    """``(n, D)`` float32 rows -> ``(n, ceil(D / 64))`` uint64: bit j of a row set when its
    component j is positive."""
    bits = np.packbits(np.asarray(rows) > 0, axis=1)
    padded = np.zeros((len(bits), -(-bits.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : bits.shape[1]] = bits
    return padded.view(np.uint64)


_TORCH_INT_MM: bool | None = None  # whether torch._int_mm works here; None until tried


def int8_dot(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``(n, D)`` int8 rows times ``(D,)`` int8 query -> ``(n,)`` int32 dot products, exact."""
    global _TORCH_INT_MM
    if _TORCH_INT_MM is not False and len(rows):
        try:
            import torch

            rows_t = torch.from_numpy(np.ascontiguousarray(rows))
            query_t = torch.from_numpy(np.ascontiguousarray(query)).reshape(-1, 1)
            result = torch._int_mm(rows_t, query_t)[:, 0].numpy()
            _TORCH_INT_MM = True
            return result
        except (ImportError, AttributeError, RuntimeError) as exc:
            if _TORCH_INT_MM is None:
                log.info("int8 products in numpy (torch._int_mm unavailable: %s)", exc)
                _TORCH_INT_MM = False
    return rows.astype(np.int32) @ query.astype(np.int32)
