"""Image descriptors: silhouette shape and CIELAB colour of one object on white."""

from __future__ import annotations

import numpy as np
import pytest

from models.embed.image import (
    DEFAULT_CONFIG,
    DescriptorError,
    foreground_from_white,
    image_descriptor,
    srgb_to_lab,
)

RED = (200, 30, 30)
BLUE = (30, 60, 200)


def _canvas(size: int = 96) -> np.ndarray:
    return np.full((size, size, 3), 255, np.uint8)


def _disc(cx: float, cy: float, r: float, colour=RED, size: int = 96) -> np.ndarray:
    image = _canvas(size)
    yy, xx = np.mgrid[:size, :size]
    image[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = colour
    return image


def _bar(cx: int, cy: int, half_w: int, half_h: int, colour=RED, size: int = 96) -> np.ndarray:
    image = _canvas(size)
    image[cy - half_h : cy + half_h, cx - half_w : cx + half_w] = colour
    return image


def test_a_descriptor_is_a_fixed_length_float32_unit_vector():
    for image in (_disc(48, 48, 20), _bar(48, 48, 30, 5), _disc(30, 60, 8, size=200)):
        d = image_descriptor(image)
        assert d.shape == (DEFAULT_CONFIG.length,)
        assert d.dtype == np.float32
        assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5)


def test_a_small_translation_barely_changes_the_descriptor():
    centred = image_descriptor(_disc(48, 48, 20))
    shifted = image_descriptor(_disc(54, 43, 20))
    assert centred @ shifted > 0.99


def test_scale_barely_changes_the_descriptor():
    assert image_descriptor(_disc(48, 48, 20)) @ image_descriptor(_disc(40, 50, 12)) > 0.97


def test_a_disc_and_a_bar_are_told_apart():
    disc, other_disc = image_descriptor(_disc(48, 48, 20)), image_descriptor(_disc(52, 44, 16))
    bar = image_descriptor(_bar(48, 48, 36, 6))
    assert disc @ other_disc > disc @ bar + 0.1


def test_upright_and_lying_bars_are_told_apart():
    lying, standing = image_descriptor(_bar(48, 48, 36, 6)), image_descriptor(_bar(48, 48, 6, 36))
    assert lying @ image_descriptor(_bar(50, 40, 30, 5)) > lying @ standing + 0.1


def test_colour_separates_equal_shapes():
    red, blue = image_descriptor(_disc(48, 48, 20, RED)), image_descriptor(_disc(48, 48, 20, BLUE))
    assert red @ image_descriptor(_disc(46, 50, 19, RED)) > red @ blue + 0.1


def test_an_explicit_mask_and_an_alpha_channel_give_the_white_background_result():
    image = _disc(48, 48, 20)
    mask = foreground_from_white(image)
    rgba = np.dstack([image, np.where(mask, 255, 0).astype(np.uint8)])
    rgba[~mask, :3] = 0  # a transparent background of any colour
    expected = image_descriptor(image)
    np.testing.assert_allclose(image_descriptor(image, mask=mask), expected, atol=1e-6)
    np.testing.assert_allclose(image_descriptor(rgba), expected, atol=1e-6)


def test_a_large_image_describes_like_its_small_version():
    small = _disc(48, 48, 20)
    large = np.kron(small, np.ones((6, 6, 1), np.uint8))
    assert image_descriptor(small) @ image_descriptor(large) > 0.99


def test_an_all_white_image_is_refused_with_a_reason():
    with pytest.raises(DescriptorError, match="no object"):
        image_descriptor(_canvas())


def test_a_non_image_array_is_refused():
    with pytest.raises(DescriptorError, match="shape"):
        image_descriptor(np.zeros((8, 8), np.uint8))


def test_lab_of_white_black_and_grey_has_no_chroma():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [119, 119, 119]], np.uint8))
    np.testing.assert_allclose(lab[:, 0], [100.0, 0.0, 50.0], atol=0.5)
    np.testing.assert_allclose(lab[:, 1:], 0.0, atol=1e-3)


def test_a_plain_coloured_backdrop_is_treated_like_white():
    on_white = _disc(48, 48, 20, BLUE)
    on_beige = on_white.copy()
    on_beige[foreground_from_white(on_white) == 0] = (230, 215, 180)
    assert image_descriptor(on_white) @ image_descriptor(on_beige) > 0.999
