"""The ``kiss3dgen`` Stage I generators: Flux + the Kiss3DGen LoRA -> 3D bundle images.

``kiss3dgen`` draws a bundle from text; ``kiss3dgen-mesh`` (3D-to-3D: enhance, edit, retexture)
and ``kiss3dgen-image`` (image-to-3D) re-draw a reference bundle with ControlNet-Union tile (and
Redux for the image).

- :mod:`.params`   :class:`Kiss3DGenParams` (the manifest ``params``) and ``check_inputs``
- :mod:`.prompts`  the fixed CLIP prompt and the T5 prompt (sentence + caption)
- :mod:`.pipeline` loading Flux (+ LoRA) from local files, the per-process model cache,
  :class:`WeightsMissingError`
- :mod:`.generate` ``generate_bundles(captions, seeds, params)``, mask clean-up, the
  degenerate-output check (:class:`DegenerateBundleError`, retryable), and
  ``generate_for_request`` (the entry of ``models.generate.registry.GENERATORS``)
- :mod:`.weights`  :class:`WeightsMissingError` (one error can name every missing path)
- :mod:`.memory`   memory modes (``FOUNDRY_FLUX_MEMORY``: auto, full, offload, sequential, fp8,
  nf4) and the ``auto`` choice from free GPU memory
- :mod:`.controlnet` Flux ControlNet(-Union) from a local folder; the tile condition
- :mod:`.redux`    Flux Redux from a local folder; image tokens appended to the T5 prompt
- :mod:`.conditioned` img2img + ControlNet (+ Redux) generation from a reference bundle
- :mod:`.mesh_to_3d`  generator ``kiss3dgen-mesh`` (:class:`MeshToBundleParams`)
- :mod:`.image_to_3d` generator ``kiss3dgen-image`` (:class:`ImageToBundleParams`)
- :mod:`.train`    LoRA fine-tuning on bundles rendered from a captioned mesh library
- :mod:`.tiny`     tiny random-weight Flux, ControlNet-Union and Redux for tests and smoke runs

diffusers, transformers and peft are imported where used, so importing this package is cheap.
"""

from models.generate.kiss3dgen.generate import (
    DegenerateBundleError,
    GeneratedBundle,
    generate_bundles,
    generate_for_request,
)
from models.generate.kiss3dgen.params import Kiss3DGenParams, Kiss3DGenParamsError, check_inputs
from models.generate.kiss3dgen.pipeline import WeightsMissingError

__all__ = [
    "DegenerateBundleError",
    "GeneratedBundle",
    "Kiss3DGenParams",
    "Kiss3DGenParamsError",
    "WeightsMissingError",
    "check_inputs",
    "generate_bundles",
    "generate_for_request",
]
