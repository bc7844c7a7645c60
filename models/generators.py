"""Stage I generators, chosen by name: each turns a request into a bundle image.

``library``  retrieve the nearest captioned mesh (by text embedding or image descriptor) and
             render its bundle (Retrieve-and-Generate; needs no weights).
``file``     a bundle image supplied by the user.
``kiss3dgen`` Flux + the Kiss3DGen LoRA (weights from a local path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.bundle import Bundle, BundleError


class GeneratorInputError(ValueError):
    """The request cannot be served by this generator (permanent)."""

    retryable = False


@dataclass(frozen=True)
class GenerationRequest:
    """What a generator needs.

    ``image``: ``(H, W, 3)`` uint8 reference image (white or any background) or None.
    ``bundle_path``: a user-supplied bundle PNG (its sidecar beside it when present).
    ``params``: generator-specific overrides from the manifest.
    """

    kind: str
    prompt: str | None = None
    image: np.ndarray | None = None
    bundle_path: Path | None = None
    seed: int = 0
    tile: int = 512
    params: dict = field(default_factory=dict)


@dataclass
class Generated:
    """A generator's answer: the bundle, metrics to record, and what it matched (if anything)."""

    bundle: Bundle
    metrics: dict[str, float] = field(default_factory=dict)
    match: dict | None = None


@dataclass(frozen=True)
class GeneratorContext:
    """Plain values generators may need: library folder, model paths, device."""

    library_path: Path | None = None
    device: str = "cpu"
    flux_path: str | None = None
    lora_path: str | None = None
    lora_scale: float = 1.0


def generate_from_file(request: GenerationRequest, context: GeneratorContext) -> Generated:
    if request.bundle_path is None:
        raise GeneratorInputError("the file generator needs `bundle: PATH` in the manifest")
    try:
        bundle = Bundle.load(request.bundle_path)
    except BundleError as exc:
        raise GeneratorInputError(f"bundle file {request.bundle_path.name}: {exc}") from exc
    return Generated(bundle=bundle)


def generate_from_library(request: GenerationRequest, context: GeneratorContext) -> Generated:
    from models.library import LibraryIndex, retrieve_and_render

    if context.library_path is None:
        raise GeneratorInputError("the library generator needs a library folder")
    index = LibraryIndex.cached(context.library_path)
    return retrieve_and_render(index, request)


def generate_with_kiss3dgen(request: GenerationRequest, context: GeneratorContext) -> Generated:
    from models.kiss3dgen.generate import generate_for_request

    return generate_for_request(request, context)


GENERATORS: dict[str, Callable[[GenerationRequest, GeneratorContext], Generated]] = {
    "library": generate_from_library,
    "file": generate_from_file,
    "kiss3dgen": generate_with_kiss3dgen,
}


def generate_bundle(
    generator: str, request: GenerationRequest, context: GeneratorContext
) -> Generated:
    """Run the generator called ``generator``."""
    try:
        fn = GENERATORS[generator]
    except KeyError:
        names = ", ".join(sorted(GENERATORS))
        raise GeneratorInputError(f"unknown generator {generator!r}; known: {names}") from None
    return fn(request, context)
