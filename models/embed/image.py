"""Appearance and shape descriptors of object images, for retrieving library meshes by image.

:func:`image_descriptor` turns one picture of one object on a plain background into a
fixed-length, L2-normalised float32 vector; the dot product of two descriptors is their
similarity in [-1, 1] (in practice [0, 1], every block being non-negative). The same function
describes a query image and the rendered views of each library mesh.

What it captures, in weighted blocks (weights in :class:`DescriptorConfig`):

- **silhouette layout**: a coarse occupancy grid of the foreground in a frame centred on its
  centroid and scaled by its radius of gyration, so it ignores where the object sits in the
  picture and how large it is drawn, but keeps its outline (a disc vs a bar vs an L) and its
  upright orientation (a standing bottle vs a lying one);
- **radial profile**: how the foreground's area spreads with distance from the centroid;
- **moments**: elongation (ratio of the principal second moments), the share of spread along
  the image's vertical axis, and fill (area over the area of the principal-axes box);
- **colour**: a joint histogram of CIELAB colour of the foreground pixels (perceptual space,
  coarse bins), square-rooted so that the dot product is the Bhattacharyya coefficient.

Limits: one object per image; the background must be plain (white, or one colour filling the
image border) or given by ``mask`` / an alpha channel; an object close to the background colour
loses the parts the test cannot see, and an object touching most of the border is misread;
silhouettes do not capture interior detail or depth, so objects with similar outlines from the
chosen view (a can and a box seen head on) are confused; it is not rotation invariant in the
image plane (on purpose: library renders and most photos are upright); colour is only as good
as the lighting of the photo, and library renders show unlit base colour, so an uncoloured mesh
(the YCB scans) is flat grey and the colour block then adds the same amount to every match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Pixels whose every channel lies within this many levels of 255 count as white background.
WHITE_TOLERANCE = 12
#: Query images are reduced to at most this many pixels on their longest side first.
WORKING_SIZE = 256
#: Share of border pixels that must match their median for it to count as a plain backdrop.
PLAIN_BORDER_SHARE = 0.9
#: Fewest foreground pixels a descriptor is computed from.
MIN_FOREGROUND_PIXELS = 16


class DescriptorError(ValueError):
    """An image a descriptor cannot be computed from (empty foreground, wrong shape)."""


@dataclass(frozen=True)
class DescriptorConfig:
    """Layout and weights of the descriptor; changing any field changes :attr:`version`."""

    grid: int = 8
    """Cells per side of the silhouette occupancy grid."""
    grid_extent: float = 2.2
    """Half-width of the occupancy grid, in radii of gyration of the silhouette."""
    radial_bins: int = 8
    """Bins of the radial profile."""
    radial_extent: float = 3.0
    """Outer edge of the radial profile, in radii of gyration."""
    lab_bins: tuple[int, int, int] = (4, 5, 5)
    """Bins of the CIELAB histogram along L*, a*, b*."""
    weight_layout: float = 0.45
    """Share of the similarity given to the silhouette occupancy grid."""
    weight_radial: float = 0.15
    """Share given to the radial profile."""
    weight_moments: float = 0.15
    """Share given to the moment features."""
    weight_colour: float = 0.25
    """Share given to the colour histogram."""

    @property
    def length(self) -> int:
        """Length of a descriptor vector."""
        lb = self.lab_bins
        return self.grid * self.grid + self.radial_bins + 3 + lb[0] * lb[1] * lb[2]

    @property
    def version(self) -> str:
        """Names the layout, so stored descriptors can be checked against the current code."""
        lb = "x".join(str(b) for b in self.lab_bins)
        weights = (self.weight_layout, self.weight_radial, self.weight_moments, self.weight_colour)
        w = ",".join(f"{x:g}" for x in weights)
        return (
            f"shape-lab-v1:g{self.grid}@{self.grid_extent:g}:r{self.radial_bins}"
            f"@{self.radial_extent:g}:lab{lb}:w{w}"
        )


DEFAULT_CONFIG = DescriptorConfig()


def foreground_from_white(image: np.ndarray, tolerance: int = WHITE_TOLERANCE) -> np.ndarray:
    """``(H, W, 3)`` uint8 on white -> ``(H, W)`` bool, True where a pixel is not white."""
    rgb = np.asarray(image)
    return (255 - rgb.astype(np.int16)).max(axis=-1) > tolerance


def foreground_from_background(image: np.ndarray, tolerance: int = WHITE_TOLERANCE) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(H, W)`` bool foreground, against a plain background.

    The background colour is the median of the image's border pixels when at least
    :data:`PLAIN_BORDER_SHARE` of them lie within ``tolerance`` of it (a plain backdrop of any
    colour); otherwise white is assumed. Textured or gradient backgrounds are not handled.
    """
    rgb = np.asarray(image).astype(np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    background = np.median(border, axis=0)
    plain = (np.abs(border - background).max(axis=-1) <= tolerance).mean() >= PLAIN_BORDER_SHARE
    if not plain:
        return foreground_from_white(image, tolerance)
    return np.abs(rgb - background).max(axis=-1) > tolerance


def image_descriptor(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    config: DescriptorConfig = DEFAULT_CONFIG,
) -> np.ndarray:
    """Describe one object image -> ``(config.length,)`` float32, unit L2 norm.

    ``image``: ``(H, W, 3)`` uint8 sRGB on a white (or other plain, see
    :func:`foreground_from_background`) background, or ``(H, W, 4)`` uint8 RGBA whose alpha
    (> 127) is the foreground. ``mask``: optional ``(H, W)`` bool foreground that
    overrides both (library renders pass the bundle's mask). Raises :class:`DescriptorError`
    when the foreground has fewer than 16 pixels.
    """
    rgb, fg = _prepare(image, mask)
    ys, xs = np.nonzero(fg)
    if ys.size < MIN_FOREGROUND_PIXELS:
        raise DescriptorError(
            f"the image has no object to describe: {ys.size} foreground pixels "
            f"(background must be white, within {WHITE_TOLERANCE} levels, or given by alpha)"
        )
    # Pixel centres, y pointing up so "upright" reads naturally in the moments.
    x = xs.astype(np.float64) + 0.5
    y = -(ys.astype(np.float64) + 0.5)
    cx, cy = x.mean(), y.mean()
    dx, dy = x - cx, y - cy
    cov = np.cov(np.stack([dx, dy]), bias=True)
    radius = float(np.sqrt(max(np.trace(cov), 1e-12)))
    u, v = dx / radius, dy / radius

    layout = _layout_block(u, v, config)
    radial = _radial_block(u, v, config)
    moments = _moments_block(cov, ys.size)
    colour = _colour_block(rgb[ys, xs], config)
    blocks = [
        (layout, config.weight_layout),
        (radial, config.weight_radial),
        (moments, config.weight_moments),
        (colour, config.weight_colour),
    ]
    # Each block is unit length and scaled by sqrt(weight), so the dot product of two
    # descriptors is the weighted mean of the per-block cosine similarities.
    total = sum(w for _, w in blocks)
    parts = [_unit(b) * np.sqrt(w / total) for b, w in blocks]
    return _unit(np.concatenate(parts)).astype(np.float32)


def _prepare(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate, split off alpha, shrink large images; returns ``(rgb uint8, fg bool)``."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise DescriptorError(f"need an (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise DescriptorError(f"need a uint8 image, got {img.dtype}")
    rgb = img[..., :3]
    if mask is not None:
        fg = np.asarray(mask, dtype=bool)
        if fg.shape != img.shape[:2]:
            raise DescriptorError(f"mask shape {fg.shape} does not match image {img.shape[:2]}")
    elif img.shape[2] == 4:
        fg = img[..., 3] > 127
    else:
        fg = foreground_from_background(rgb)
    longest = max(img.shape[:2])
    if longest > WORKING_SIZE:
        step = int(np.ceil(longest / WORKING_SIZE))
        rgb, fg = _shrink(rgb, fg, step)
    return rgb, fg


def _shrink(rgb: np.ndarray, fg: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-reduce by ``step``: colour averaged over foreground pixels, majority foreground."""
    h, w = fg.shape
    hh, ww = h // step * step, w // step * step
    f = fg[:hh, :ww].reshape(hh // step, step, ww // step, step).astype(np.float64)
    c = rgb[:hh, :ww].reshape(hh // step, step, ww // step, step, 3).astype(np.float64)
    count = f.sum(axis=(1, 3))
    colour = (c * f[..., None]).sum(axis=(1, 3)) / np.maximum(count, 1.0)[..., None]
    return np.round(colour).astype(np.uint8), count >= 0.5 * step * step


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def _layout_block(u: np.ndarray, v: np.ndarray, config: DescriptorConfig) -> np.ndarray:
    """Occupancy of a ``grid x grid`` frame (rows top to bottom), square-rooted shares."""
    e = config.grid_extent
    edges = np.linspace(-e, e, config.grid + 1)
    hist, _, _ = np.histogram2d(-v, u, bins=(edges, edges))
    return np.sqrt(hist.ravel() / u.size)


def _radial_block(u: np.ndarray, v: np.ndarray, config: DescriptorConfig) -> np.ndarray:
    """Share of the area at each distance from the centroid (radii of gyration)."""
    rho = np.minimum(np.hypot(u, v), config.radial_extent - 1e-9)
    hist, _ = np.histogram(rho, bins=config.radial_bins, range=(0.0, config.radial_extent))
    return np.sqrt(hist / u.size)


def _moments_block(cov: np.ndarray, area: int) -> np.ndarray:
    """Elongation, vertical share of the spread, and fill of the principal-axes box, in [0, 1]."""
    evals = np.clip(np.linalg.eigvalsh(cov), 1e-12, None)  # ascending
    elongation = float(np.sqrt(evals[0] / evals[1]))
    vertical = float(cov[1, 1] / max(np.trace(cov), 1e-12))
    # A solid rectangle of sides a, b has principal variances a^2/12 and b^2/12, so the box
    # implied by the moments has area 12 sqrt(l0 l1): fill is 1 for a rectangle, about 0.91
    # for a disc, and lower for hollow or ragged shapes.
    box = 12.0 * float(np.sqrt(evals[0] * evals[1]))
    fill = float(np.clip(area / max(box, 1e-12), 0.0, 1.0))
    return np.array([elongation, vertical, fill])


def _colour_block(pixels: np.ndarray, config: DescriptorConfig) -> np.ndarray:
    """Joint CIELAB histogram of ``(P, 3)`` uint8 sRGB pixels, square-rooted shares."""
    # Very saturated colours fall outside +-80 in a*/b*; clip them into the outer bins.
    lab = np.clip(srgb_to_lab(pixels), [0.0, -79.999, -79.999], [99.999, 79.999, 79.999])
    nl, na, nb = config.lab_bins
    hist, _ = np.histogramdd(
        lab, bins=(nl, na, nb), range=((0.0, 100.0), (-80.0, 80.0), (-80.0, 80.0))
    )
    return np.sqrt(hist.ravel() / len(lab))


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``(..., 3)`` uint8 -> CIELAB ``(..., 3)`` float64 (D65 white; L* in [0, 100])."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps = 216.0 / 24389.0
    kappa = 24389.0 / 27.0
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16.0) / 116.0)
    lab_l = 116.0 * f[..., 1] - 16.0
    lab_a = 500.0 * (f[..., 0] - f[..., 1])
    lab_b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lab_l, lab_a, lab_b], axis=-1)
