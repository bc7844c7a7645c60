"""The rows nearest to a query by the signs of their components, in one pass (numba).

A separate module so that importing :mod:`storage.quantised_embeddings` (every search, the CLI's
cold one included) does not import numba; a long-lived server that shortlists by sign pays for
it once (compiled into numba's disk cache on first use).
"""

from __future__ import annotations

import numba
import numpy as np

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@numba.njit(cache=True, nogil=True)
def nearest_by_sign(words: np.ndarray, query: np.ndarray, size: int,
                    excluded: np.ndarray) -> np.ndarray:
    """Rows of ``words`` (``(n, W)`` uint64 sign words) whose signs differ from ``query``'s
    (``(W,)`` uint64) in the fewest components: ``(size,)`` int64, ascending row order, ties
    at the cut taken in row order. ``excluded``: ``(n,)`` bool rows never chosen (before any
    other), or an empty array for none. Requires ``size <= n``.

    Distances are at most ``64 W``, so a histogram of them gives the cut without sorting:
    one pass counts, a second collects."""
    n, width = words.shape
    distances = np.empty(n, np.uint16)
    counts = np.zeros(width * 64 + 2, np.int64)
    masked = excluded.shape[0] == n
    for i in range(n):
        d = np.uint64(0)
        for j in range(width):
            # Bits set in x, summed per 2, 4, 8 bits, then over the 8 bytes (LLVM makes this
            # one popcnt instruction where the CPU has it).
            x = words[i, j] ^ query[j]
            x = x - ((x >> np.uint64(1)) & _M1)
            x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
            x = (x + (x >> np.uint64(4))) & _M4
            d += (x * _H01) >> np.uint64(56)
        if masked and excluded[i]:
            d = np.uint64(width * 64 + 1)
        distances[i] = d
        counts[d] += 1
    cut, below = 0, 0
    while below + counts[cut] < size:
        below += counts[cut]
        cut += 1
    chosen = np.empty(size, np.int64)
    k, ties = 0, size - below
    for i in range(n):
        d = distances[i]
        if d < cut or (d == cut and ties > 0):
            if d == cut:
                ties -= 1
            chosen[k] = i
            k += 1
    return chosen
