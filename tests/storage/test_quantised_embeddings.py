"""int8 copies of unit embeddings: exact integer products, cosines close to float32 ones,
rows appended without touching those already quantised; sign codes whose shortlist holds the
nearest rows where embeddings cluster, and says so where they do not."""

from __future__ import annotations

import numpy as np

from storage.quantised_embeddings import (
    QuantisedRows,
    int8_dot,
    quantise,
    sign_words,
)


def _unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.normal(size=(count, 384)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _clustered_rows(rng: np.random.Generator, count: int, clusters: int = 300) -> np.ndarray:
    """Unit rows around ``clusters`` random centres, as text embeddings group by meaning."""
    centres = rng.normal(size=(clusters, 384)).astype(np.float32)
    rows = centres[rng.integers(0, clusters, count)] + rng.normal(size=(count, 384)).astype(
        np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _quantised(rows: np.ndarray) -> QuantisedRows:
    quantised = QuantisedRows(rows)
    quantised.extend(len(rows))
    return quantised


def test_int8_products_equal_the_integer_sums():
    rng = np.random.default_rng(0)
    rows = rng.integers(-127, 128, size=(1000, 384)).astype(np.int8)
    query = rng.integers(-127, 128, size=384).astype(np.int8)
    assert np.array_equal(int8_dot(rows, query), rows.astype(np.int64) @ query.astype(np.int64))


def test_quantised_cosines_are_within_3e_3_of_the_float32_ones():
    rng = np.random.default_rng(1)
    rows = _unit_rows(rng, 5000)
    quantised = QuantisedRows(rows)
    quantised.extend(len(rows))
    query = _unit_rows(rng, 1)[0]
    np.testing.assert_allclose(quantised.cosines(query, len(rows)), rows @ query, rtol=0,
                               atol=3e-3)


def test_a_zero_row_quantises_to_zero_codes():
    codes, scales = quantise(np.zeros((1, 384), dtype=np.float32))
    assert not codes.any() and scales[0] == 1.0


def test_rows_appended_later_are_quantised_and_earlier_ones_kept():
    rng = np.random.default_rng(2)
    buffer = np.zeros((100, 384), dtype=np.float32)
    buffer[:60] = _unit_rows(rng, 60)
    quantised = QuantisedRows(buffer)
    quantised.extend(60)
    before = quantised.codes[:60].copy()
    buffer[60:90] = _unit_rows(rng, 30)
    quantised.extend(90)
    assert np.array_equal(quantised.codes[:60], before)
    assert np.array_equal(quantised.codes[60:90], quantise(buffer[60:90])[0])
    assert quantised.count == 90


def test_the_sign_shortlist_is_the_rows_whose_signs_differ_from_the_query_least():
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(3000, 384)).astype(np.float32)
    query = rng.normal(size=384).astype(np.float32)
    differing = ((rows > 0) != (query > 0)).sum(axis=1)
    shortlist = _quantised(rows).sign_shortlist(query, len(rows), 100)
    cut = differing[shortlist].max()
    assert len(set(shortlist.tolist())) == 100
    assert set(np.flatnonzero(differing < cut)) <= set(shortlist.tolist())


def test_sign_words_set_the_bits_of_the_positive_components():
    rows = np.zeros((1, 70), dtype=np.float32)
    rows[0, [0, 65]] = 1.0
    rows[0, 3] = -1.0
    words = sign_words(rows)
    assert words.shape == (1, 2)
    assert np.unpackbits(words.view(np.uint8), axis=1)[0].nonzero()[0].tolist() == [0, 65]


def test_the_sign_shortlist_holds_the_nearest_rows_of_clustered_embeddings():
    rows = _clustered_rows(np.random.default_rng(4), 12_000)
    assert _quantised(rows).sign_recall(len(rows), 2000) >= 0.99


def test_the_sign_shortlist_of_uniformly_random_rows_misses_nearest_ones():
    rows = _unit_rows(np.random.default_rng(5), 12_000)
    assert _quantised(rows).sign_recall(len(rows), 2000) < 0.99


def test_the_sign_shortlist_never_chooses_an_excluded_row():
    rows = _clustered_rows(np.random.default_rng(6), 1000)
    excluded = np.zeros(len(rows), dtype=bool)
    excluded[:500] = True
    shortlist = _quantised(rows).sign_shortlist(rows[0], len(rows), 100, excluded)
    assert len(shortlist) == 100 and shortlist.min() >= 500
