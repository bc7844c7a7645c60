"""int8 copies of unit embeddings: exact integer products, cosines close to float32 ones,
rows appended without touching those already quantised."""

from __future__ import annotations

import numpy as np

from storage.quantised_embeddings import QuantisedRows, int8_dot, quantise


def _unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.normal(size=(count, 384)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


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
