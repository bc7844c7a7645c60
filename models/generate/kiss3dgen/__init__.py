"""The ``kiss3dgen`` Stage I generator: Flux + the Kiss3DGen LoRA -> 3D bundle images.

- :mod:`.params`   :class:`Kiss3DGenParams` (the manifest ``params``) and ``check_inputs``
- :mod:`.prompts`  the fixed CLIP prompt and the T5 prompt (sentence + caption)
- :mod:`.pipeline` loading Flux (+ LoRA) from local files, the per-process model cache,
  :class:`WeightsMissingError`
- :mod:`.generate` ``generate_bundles(captions, seeds, params)``, mask clean-up, the
  degenerate-output check (:class:`DegenerateBundleError`, retryable), and
  ``generate_for_request`` (the entry of ``models.generate.registry.GENERATORS``)
- :mod:`.train`    LoRA fine-tuning on bundles rendered from a captioned mesh library
- :mod:`.tiny`     tiny random-weight Flux pipelines for tests and smoke runs

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
