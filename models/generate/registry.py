"""Stage I generators, chosen by name: each turns a request into a bundle image.

``library``  retrieve the nearest captioned mesh (by text embedding or image descriptor) and
             render its bundle (Retrieve-and-Generate; needs no weights).
``file``     a bundle image supplied by the user.
``kiss3dgen`` Flux + the Kiss3DGen LoRA (weights from a local path).
``kiss3dgen-mesh``  3D-to-3D: enhance, edit or retexture ``request.mesh_path`` (Flux + LoRA +
             ControlNet-Union tile on the mesh's rendered bundle).
``kiss3dgen-image`` image-to-3D: the reference image's object (background removed) as a Redux
             image prompt, and a coarse bundle (the library's best match) under ControlNet tile.
"""

from __future__ import annotations

from collections.abc import Callable

from models.bundle.spec import Bundle, BundleError
from models.generate.base import Generated, GenerationRequest, GeneratorContext, GeneratorInputError


def generate_from_file(request: GenerationRequest, context: GeneratorContext) -> Generated:
    if request.bundle_path is None:
        raise GeneratorInputError("the file generator needs `bundle: PATH` in the manifest")
    try:
        bundle = Bundle.load(request.bundle_path)
    except BundleError as exc:
        raise GeneratorInputError(f"bundle file {request.bundle_path.name}: {exc}") from exc
    return Generated(bundle=bundle)


def generate_from_library(request: GenerationRequest, context: GeneratorContext) -> Generated:
    from models.generate.library import retrieve_and_render
    from models.library.index import LibraryIndex

    if context.library_path is None:
        raise GeneratorInputError("the library generator needs a library folder")
    index = LibraryIndex.cached(context.library_path)
    return retrieve_and_render(index, request)


def generate_with_kiss3dgen(request: GenerationRequest, context: GeneratorContext) -> Generated:
    from models.generate.kiss3dgen.generate import generate_for_request

    return generate_for_request(request, context)


def generate_with_kiss3dgen_mesh(
    request: GenerationRequest, context: GeneratorContext
) -> Generated:
    from models.generate.kiss3dgen.mesh_to_3d import generate_from_mesh

    return generate_from_mesh(request, context)


def generate_with_kiss3dgen_image(
    request: GenerationRequest, context: GeneratorContext
) -> Generated:
    from models.generate.kiss3dgen.image_to_3d import generate_from_image

    return generate_from_image(request, context)


GENERATORS: dict[str, Callable[[GenerationRequest, GeneratorContext], Generated]] = {
    "library": generate_from_library,
    "file": generate_from_file,
    "kiss3dgen": generate_with_kiss3dgen,
    "kiss3dgen-mesh": generate_with_kiss3dgen_mesh,
    "kiss3dgen-image": generate_with_kiss3dgen_image,
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
