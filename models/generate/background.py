"""Background removal of reference images: the object's mask, then the object centred and padded.

Three ways to find the object, tried in this order:

1. **alpha**: an ``(H, W, 4)`` image whose alpha channel is not all opaque: foreground is
   ``alpha > 127``.
2. **matting model** (only when a local path is given): a TorchScript module (``torch.jit.save``
   of any matting network, e.g. an exported BiRefNet / RMBG) mapping ``(1, 3, S, S)`` float32
   RGB in [0, 1] to ``(1, 1, S, S)`` alpha (probabilities, or logits when values leave [0, 1]);
   ``S`` is :data:`MATTING_SIZE`. Nothing is downloaded.
3. **border flood** (no weights): when the image border is a near-uniform colour (white, grey,
   a flat studio backdrop), the background is every pixel within a tolerance of that colour
   that is connected to the border. Object pixels of the backdrop colour survive when the
   object encloses them (a white label on a bottle on white).

:func:`remove_background` returns a :class:`Segmented` image; :func:`centre_object` crops it to
the object and pads it to a square with the object filling a fixed share of the side, on white
(what Kiss3DGen's image preprocessing does before Redux and the multi-view model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

#: Share of border pixels that must lie near their median colour for the border to be "plain".
PLAIN_BORDER_SHARE = 0.9
#: Smallest colour distance (max over channels, 0..255) that separates object from backdrop.
MIN_TOLERANCE = 12.0
#: A border noisier than this (median absolute deviation, levels) is texture, not a backdrop.
MAX_BORDER_NOISE = 16.0
#: The tolerance grows with the backdrop's noise: this many median absolute deviations.
NOISE_MADS = 3.5
#: An enclosed backdrop-coloured region is a hole (background) when its median distance to the
#: backdrop is at most ``HOLE_SLACK + HOLE_NOISES * noise`` levels: the backdrop itself.
HOLE_SLACK = 2.0
HOLE_NOISES = 1.5
#: Foreground islands smaller than this share of the object's area are dropped as noise.
MIN_ISLAND_SHARE = 0.01
#: Side of the square image a matting model sees.
MATTING_SIZE = 1024
#: Default share of the padded square's side that the object's longer side fills.
OBJECT_FRACTION = 0.85
#: Fewest foreground pixels that count as an object.
MIN_OBJECT_PIXELS = 16

METHODS = ("alpha", "matting", "border")


class BackgroundError(ValueError):
    """A reference image whose object cannot be separated from its background (permanent)."""

    retryable = False


@dataclass(frozen=True)
class Segmented:
    """An image with its object mask.

    ``rgb``: ``(H, W, 3)`` uint8 as given. ``mask``: ``(H, W)`` bool, True on the object.
    ``method``: which of :data:`METHODS` found it. ``background``: ``(3,)`` uint8 backdrop
    colour for the border method, else ``None``.
    """

    rgb: np.ndarray
    mask: np.ndarray
    method: str
    background: np.ndarray | None = None

    @property
    def rgba(self) -> np.ndarray:
        """``(H, W, 4)`` uint8: the colours with alpha 255 on the object, 0 elsewhere."""
        alpha = np.where(self.mask, 255, 0).astype(np.uint8)
        return np.concatenate([self.rgb, alpha[..., None]], axis=-1)


def remove_background(
    image: np.ndarray,
    *,
    matting_path: str | Path | None = None,
    tolerance: float | None = None,
) -> Segmented:
    """Find the object of a one-object reference image.

    ``image``: ``(H, W, 3)`` or ``(H, W, 4)`` uint8. ``matting_path``: a local TorchScript
    matting model (see the module docstring), used when the image has no alpha. ``tolerance``:
    colour distance (0..255, max over channels) of the border flood; default: from the border's
    noise, at least :data:`MIN_TOLERANCE`. Raises :class:`BackgroundError` when the image is
    malformed, the border is not plain and no model is given, or no object is left.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise BackgroundError(
            f"reference image must be (H, W, 3) or (H, W, 4) uint8, got {img.shape} {img.dtype}"
        )
    rgb = np.ascontiguousarray(img[..., :3])
    if img.shape[2] == 4 and (img[..., 3] < 255).any():
        return _checked(Segmented(rgb=rgb, mask=img[..., 3] > 127, method="alpha"))
    if matting_path is not None:
        return _checked(Segmented(rgb=rgb, mask=matting_mask(rgb, matting_path), method="matting"))
    background, plain, noise = border_colour(rgb)
    if not plain:
        raise BackgroundError(
            "the reference image's background is not a plain colour: give it an alpha "
            "channel, or a matting model (params.matting_path)"
        )
    tol = tolerance if tolerance is not None else max(MIN_TOLERANCE, NOISE_MADS * noise)
    mask = flood_background(rgb, background, tol, noise)
    return _checked(Segmented(rgb=rgb, mask=mask, method="border", background=background))


def border_colour(rgb: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """``(colour (3,) uint8, plain, noise)`` of an image's one-pixel border.

    ``colour`` is the per-channel median; ``plain`` is True when at least
    :data:`PLAIN_BORDER_SHARE` of border pixels lie within :data:`MIN_TOLERANCE` (or 3 MADs)
    of it and the MAD is at most :data:`MAX_BORDER_NOISE`; ``noise`` is the median absolute
    deviation of the border's distance to it.
    """
    c = rgb.astype(np.int16)
    border = np.concatenate([c[0], c[-1], c[1:-1, 0], c[1:-1, -1]])
    colour = np.median(border, axis=0)
    dist = np.abs(border - colour).max(axis=-1)
    noise = float(np.median(dist))
    near = dist <= max(MIN_TOLERANCE, 3.0 * noise)
    plain = bool(near.mean() >= PLAIN_BORDER_SHARE and noise <= MAX_BORDER_NOISE)
    return np.round(colour).astype(np.uint8), plain, noise


def flood_background(
    rgb: np.ndarray, background: np.ndarray, tolerance: float, noise: float = 0.0
) -> np.ndarray:
    """Object mask ``(H, W)`` bool against a plain backdrop of colour ``background``.

    Background is every pixel within ``tolerance`` of ``background`` (max over channels) that
    is 4-connected to the image border, plus enclosed regions whose median distance to the
    backdrop is within its own noise (``HOLE_SLACK + HOLE_NOISES * noise``): the backdrop seen
    through a hole, like a mug handle's opening. Enclosed regions of a nearby but distinct
    colour (an off-white label on a bottle photographed on white) stay object. Tiny islands
    are dropped.
    """
    dist = np.abs(rgb.astype(np.int16) - background.astype(np.int16)).max(axis=-1)
    near = dist <= tolerance
    labels, n = ndimage.label(near)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    is_background = np.zeros(n + 1, dtype=bool)
    is_background[edge[edge > 0]] = True
    if n:
        medians = ndimage.median(dist, labels, index=np.arange(1, n + 1))
        is_background[1:] |= np.asarray(medians) <= HOLE_SLACK + HOLE_NOISES * noise
    is_background[0] = False
    return drop_small_islands(~is_background[labels])


def drop_small_islands(mask: np.ndarray, min_share: float = MIN_ISLAND_SHARE) -> np.ndarray:
    """Keep the largest 8-connected island and any island at least ``min_share`` of the total
    foreground; ``mask`` is ``(H, W)`` bool, a new array is returned."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask.copy()
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = sizes >= min_share * sizes.sum()
    keep[int(np.argmax(sizes))] = True
    return keep[labels - 1] & (labels > 0)


def matting_mask(rgb: np.ndarray, path: str | Path) -> np.ndarray:
    """Object mask ``(H, W)`` bool from a local TorchScript matting model (alpha > 0.5)."""
    import torch
    import torch.nn.functional as F

    path = Path(path).expanduser()
    if not path.is_file():
        raise BackgroundError(
            f"matting model {path}: expected a TorchScript file (torch.jit.save) mapping "
            "(1, 3, S, S) RGB in [0, 1] to (1, 1, S, S) alpha (the file does not exist)"
        )
    try:
        model = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise BackgroundError(f"matting model {path}: not a TorchScript file ({exc})") from exc
    h, w = rgb.shape[:2]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(MATTING_SIZE, MATTING_SIZE), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        out = model(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    out = out.float()
    if out.min() < 0 or out.max() > 1:  # logits
        out = out.sigmoid()
    alpha = F.interpolate(out.reshape(1, 1, *out.shape[-2:]), size=(h, w), mode="bilinear",
                          align_corners=False)[0, 0]
    return (alpha > 0.5).numpy()


def centre_object(
    segmented: Segmented, size: int = 512, object_fraction: float = OBJECT_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """The object cropped, centred and padded on white: ``((size, size, 3) uint8, (size, size)
    bool mask)``.

    The object's bounding box is scaled so its longer side is ``object_fraction`` of ``size``
    (bicubic for colour, nearest for the mask); background pixels become white.
    """
    from PIL import Image

    if not 0 < object_fraction <= 1:
        raise ValueError(f"object_fraction must be in (0, 1], got {object_fraction}")
    ys, xs = np.nonzero(segmented.mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.where(segmented.mask[..., None], segmented.rgb, 255)[y0:y1, x0:x1].astype(np.uint8)
    crop_mask = segmented.mask[y0:y1, x0:x1]
    side = max(1, round(object_fraction * size))
    scale = side / max(crop.shape[:2])
    new_w = max(1, round(crop.shape[1] * scale))
    new_h = max(1, round(crop.shape[0] * scale))
    colour = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.BICUBIC))
    mask = np.asarray(
        Image.fromarray(crop_mask.astype(np.uint8) * 255).resize((new_w, new_h),
                                                                  Image.Resampling.NEAREST)
    ) > 127
    out = np.full((size, size, 3), 255, np.uint8)
    out_mask = np.zeros((size, size), bool)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = np.where(mask[..., None], colour, 255)
    out_mask[top : top + new_h, left : left + new_w] = mask
    return out, out_mask


def _checked(segmented: Segmented) -> Segmented:
    count = int(segmented.mask.sum())
    if count < MIN_OBJECT_PIXELS:
        raise BackgroundError(
            f"no object found in the reference image by {segmented.method}: {count} "
            "foreground pixels"
        )
    if segmented.mask.all():
        raise BackgroundError(
            f"no background found in the reference image by {segmented.method}: every pixel "
            "is foreground"
        )
    return segmented
