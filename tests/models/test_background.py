"""Background removal of reference images: masks recovered from synthetic object pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models.generate.background import (
    BackgroundError,
    centre_object,
    remove_background,
)

SIZE = 192
MIN_IOU = 0.98


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def object_picture(background, seed: int = 0, noise: float = 0.0):
    """A mug-like object (body, handle, a lighter label) on ``background``: (image, true mask)."""
    mask_img = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask_img)
    draw.rounded_rectangle((60, 40, 130, 160), radius=12, fill=255)
    draw.ellipse((118, 70, 160, 130), fill=255)
    draw.ellipse((130, 85, 148, 115), fill=0)  # the handle's opening shows the background
    mask = np.asarray(mask_img) > 127
    rng = np.random.default_rng(seed)
    image = np.empty((SIZE, SIZE, 3), np.float64)
    image[:] = background
    yy = np.arange(SIZE)[:, None] / SIZE
    body = np.stack([150 + 60 * yy, 40 + 0 * yy, 30 + 40 * yy], axis=-1) * np.ones((1, SIZE, 1))
    image[mask] = body[mask]
    label = np.zeros_like(mask)
    label[80:110, 70:120] = True
    image[label] = (250, 250, 250)  # white label, enclosed by the body
    image += rng.normal(0.0, noise, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def test_an_object_on_white_is_recovered_with_its_enclosed_white_label():
    image, truth = object_picture((255, 255, 255))
    seg = remove_background(image)
    assert seg.method == "border"
    assert iou(seg.mask, truth) >= MIN_IOU
    assert seg.mask[95, 95]  # the white label is inside the object


def test_an_object_on_a_flat_coloured_backdrop_is_recovered():
    image, truth = object_picture((40, 120, 200))
    seg = remove_background(image)
    assert iou(seg.mask, truth) >= MIN_IOU
    np.testing.assert_array_equal(seg.background, (40, 120, 200))


def test_an_object_on_a_noisy_grey_backdrop_is_recovered():
    image, truth = object_picture((128, 128, 128), noise=4.0)
    assert iou(remove_background(image).mask, truth) >= MIN_IOU


def test_an_image_with_alpha_uses_the_alpha_channel_whatever_the_colours():
    image, truth = object_picture((255, 255, 255))
    noise = np.random.default_rng(1).integers(0, 256, image.shape, dtype=np.uint8)
    rgb = np.where(truth[..., None], image, noise)  # garbage under the transparent pixels
    rgba = np.concatenate([rgb, np.where(truth, 255, 0).astype(np.uint8)[..., None]], axis=-1)
    seg = remove_background(rgba)
    assert seg.method == "alpha"
    assert iou(seg.mask, truth) >= MIN_IOU


def test_the_handle_opening_stays_background():
    image, truth = object_picture((255, 255, 255))
    seg = remove_background(image)
    assert not seg.mask[100, 139] and not truth[100, 139]


def test_a_textured_background_without_a_model_is_a_clear_error():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(BackgroundError, match="matting_path"):
        remove_background(image)


def test_an_empty_picture_has_no_object():
    with pytest.raises(BackgroundError, match="no object"):
        remove_background(np.full((64, 64, 3), 255, np.uint8))


def test_a_missing_matting_model_names_its_path(tmp_path):
    image, _ = object_picture((255, 255, 255))
    with pytest.raises(BackgroundError, match="rmbg.pt"):
        remove_background(image, matting_path=tmp_path / "rmbg.pt")


def test_a_torchscript_matting_model_from_a_local_path_gives_the_mask(tmp_path):
    torch = pytest.importorskip("torch")

    class DarkIsObject(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.mean(dim=1, keepdim=True) < 0.9).float()

    path = tmp_path / "matting.pt"
    torch.jit.save(torch.jit.script(DarkIsObject()), str(path))
    image, truth = object_picture((255, 255, 255))
    seg = remove_background(image, matting_path=path)
    assert seg.method == "matting"
    # The model sees the label as background: the mask is the body without the label.
    label = np.zeros_like(truth)
    label[80:110, 70:120] = True
    assert iou(seg.mask, truth & ~label) >= 0.95


def test_centring_puts_the_object_in_the_middle_at_the_requested_share():
    image, _ = object_picture((40, 120, 200))
    rgb, mask = centre_object(remove_background(image), size=128, object_fraction=0.5)
    assert rgb.shape == (128, 128, 3) and mask.shape == (128, 128)
    ys, xs = np.nonzero(mask)
    assert max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == 64
    assert abs((ys.min() + ys.max()) / 2 - 63.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 63.5) <= 1
    assert (rgb[~mask] == 255).all()
