"""The 3D bundle image (spec ``kiss3d-bundle-v1``): 4 colour views over 4 normal maps.

The layout, normal encoding, foreground rule and sidecar follow BUNDLE_SPEC.md exactly.
Frames: normals in the bundle are camera-space unit normals of each view (see
:mod:`models.bundle.cameras`); the world frame is right-handed, +Y up, front facing +Z.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

SPEC_NAME = "kiss3d-bundle-v1"
NUM_VIEWS = 4
#: A decoded normal shorter than this is foreground (white decodes to sqrt(3)).
FOREGROUND_MAX_LENGTH = 1.35
#: Longest side of the object's bounding box after normalisation.
NORMALISED_EXTENT = 1.8


class BundleError(ValueError):
    """A bundle image or sidecar that breaks the spec."""


@dataclass(frozen=True)
class BundleSpec:
    """The sidecar ``bundle.json``: how a bundle was rendered.

    ``scale`` and ``offset`` map the source mesh into the bundle frame:
    ``bundle_xyz = (source_xyz_yup - offset) * scale``.
    """

    spec: str = SPEC_NAME
    tile: int = 512
    azimuths: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
    elevation: float = 5.0
    fov: float = 30.0
    distance: float = 4.5
    scale: float = 1.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    producer: str = "unknown"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        extra = data.pop("extra")
        data["azimuths"] = list(self.azimuths)
        data["offset"] = list(self.offset)
        data.update(extra)
        return json.dumps(data, indent=1, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict) -> BundleSpec:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        if kwargs.get("spec", SPEC_NAME) != SPEC_NAME:
            raise BundleError(f"unknown bundle spec {kwargs['spec']!r}, expected {SPEC_NAME!r}")
        if "azimuths" in kwargs:
            kwargs["azimuths"] = tuple(float(a) for a in kwargs["azimuths"])
            if len(kwargs["azimuths"]) != NUM_VIEWS:
                raise BundleError(
                    f"sidecar must list {NUM_VIEWS} azimuths, got {kwargs['azimuths']}"
                )
        if "offset" in kwargs:
            kwargs["offset"] = tuple(float(o) for o in kwargs["offset"])
        for name in ("elevation", "fov", "distance", "scale"):
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        if "tile" in kwargs:
            kwargs["tile"] = int(kwargs["tile"])
        return cls(**kwargs, extra=extra)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """Camera-space unit normals ``(..., 3)`` float -> RGB ``(..., 3)`` uint8 (x flipped)."""
    n = np.asarray(normals, dtype=np.float64)
    rgb = np.stack([(1.0 - n[..., 0]) / 2.0, (1.0 + n[..., 1]) / 2.0, (1.0 + n[..., 2]) / 2.0], -1)
    return np.clip(np.round(255.0 * rgb), 0, 255).astype(np.uint8)


def decode_normals_raw(rgb: np.ndarray) -> np.ndarray:
    """RGB ``(..., 3)`` uint8 -> un-normalised decoded vectors ``(..., 3)`` float32."""
    c = np.asarray(rgb, dtype=np.float32) / 255.0
    return np.stack([1.0 - 2.0 * c[..., 0], 2.0 * c[..., 1] - 1.0, 2.0 * c[..., 2] - 1.0], -1)


def foreground_mask(normal_rgb: np.ndarray) -> np.ndarray:
    """The spec's foreground rule on a normal tile: ``(..., 3)`` uint8 -> ``(...)`` bool."""
    return np.linalg.norm(decode_normals_raw(normal_rgb), axis=-1) < FOREGROUND_MAX_LENGTH


def decode_normals(normal_rgb: np.ndarray) -> np.ndarray:
    """RGB ``(..., 3)`` uint8 -> unit camera-space normals ``(..., 3)`` float32; 0 on background."""
    raw = decode_normals_raw(normal_rgb)
    length = np.linalg.norm(raw, axis=-1, keepdims=True)
    unit = raw / np.maximum(length, 1e-8)
    return np.where(length < FOREGROUND_MAX_LENGTH, unit, 0.0).astype(np.float32)


def split_tiles(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T*2, T*4, 3)`` uint8 bundle -> colour tiles, normal tiles, each ``(4, T, T, 3)``."""
    check_layout(image)
    t = image.shape[0] // 2
    rows = image.reshape(2, t, NUM_VIEWS, t, 3).transpose(0, 2, 1, 3, 4)
    return rows[0].copy(), rows[1].copy()


def join_tiles(colours: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Colour and normal tiles ``(4, T, T, 3)`` uint8 -> bundle image ``(2T, 4T, 3)`` uint8."""
    colours = np.asarray(colours)
    normals = np.asarray(normals)
    if colours.shape != normals.shape or colours.shape[0] != NUM_VIEWS or colours.ndim != 4:
        raise BundleError(
            f"need two (4, T, T, 3) tile stacks, got {colours.shape} and {normals.shape}"
        )
    t = colours.shape[1]
    rows = np.stack([colours, normals])  # (2, 4, T, T, 3)
    return rows.transpose(0, 2, 1, 3, 4).reshape(2 * t, NUM_VIEWS * t, 3).astype(np.uint8)


def check_layout(image: np.ndarray) -> None:
    """Raise :class:`BundleError` unless ``image`` is an RGB uint8 2:1 bundle of square tiles."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise BundleError(f"bundle must be an RGB image, got shape {image.shape}")
    h, w = image.shape[:2]
    if w != 2 * h or h % 2:
        raise BundleError(f"bundle width must be twice its height with even height, got {w} x {h}")


class ViewTiles:
    """What a stack of views offers once it has 8-bit colour and encoded normal tiles.

    Subclasses provide ``colour_tiles()`` and ``normal_tiles()``, each ``(N, T, T, 3)`` uint8;
    the decoded views follow from them exactly as the spec says.
    """

    def colour_tiles(self) -> np.ndarray:
        raise NotImplementedError

    def normal_tiles(self) -> np.ndarray:
        raise NotImplementedError

    def colours(self) -> np.ndarray:
        """``(N, T, T, 3)`` float32 sRGB in [0, 1]."""
        return self.colour_tiles().astype(np.float32) / 255.0

    def normals(self) -> np.ndarray:
        """``(N, T, T, 3)`` float32 camera-space unit normals, 0 on background."""
        return decode_normals(self.normal_tiles())

    def masks(self) -> np.ndarray:
        """``(N, T, T)`` bool foreground masks (the spec's decoded-length rule)."""
        return foreground_mask(self.normal_tiles())


@dataclass
class Bundle(ViewTiles):
    """A bundle image with its sidecar.

    ``image``: ``(2T, 4T, 3)`` uint8, row 0 colour, row 1 encoded normals, white background.
    """

    image: np.ndarray
    spec: BundleSpec = field(default_factory=BundleSpec)

    def __post_init__(self) -> None:
        check_layout(self.image)
        tile = self.image.shape[0] // 2
        if self.spec.tile != tile:
            raise BundleError(f"sidecar says tile {self.spec.tile} but the image has tile {tile}")

    @property
    def tile(self) -> int:
        return self.image.shape[0] // 2

    def colour_tiles(self) -> np.ndarray:
        """``(4, T, T, 3)`` uint8 sRGB colour views over white."""
        return split_tiles(self.image)[0]

    def normal_tiles(self) -> np.ndarray:
        """``(4, T, T, 3)`` uint8 encoded normal views."""
        return split_tiles(self.image)[1]

    @classmethod
    def from_tiles(cls, colours: np.ndarray, normals: np.ndarray, spec: BundleSpec) -> Bundle:
        """Build from ``(4, T, T, 3)`` uint8 colour tiles and encoded normal tiles."""
        image = join_tiles(colours, normals)
        return cls(image=image, spec=replace(spec, tile=image.shape[0] // 2))

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (PNG) and its sidecar ``<stem>.json``; returns the PNG path."""
        path = Path(path)
        Image.fromarray(self.image, "RGB").save(path, format="PNG")
        sidecar_path(path).write_text(self.spec.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """Read a bundle PNG and its sidecar (defaults when absent, tile from the image)."""
        path = Path(path)
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"))
        return cls.from_image(image, _read_sidecar(sidecar_path(path)))

    @classmethod
    def from_image(cls, image: np.ndarray, sidecar: dict | None = None) -> Bundle:
        """Bundle from an image array and an optional sidecar dict (spec defaults otherwise)."""
        check_layout(image)
        data = dict(sidecar or {})
        data.setdefault("tile", image.shape[0] // 2)
        image = np.ascontiguousarray(image, dtype=np.uint8)
        return cls(image=image, spec=BundleSpec.from_dict(data))


def sidecar_path(image_path: str | Path) -> Path:
    """``bundle.png`` -> ``bundle.json``."""
    return Path(image_path).with_suffix(".json")


def _read_sidecar(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"sidecar {path} is not valid JSON: {exc}") from exc
