"""Memory modes of the Flux loader (``FOUNDRY_FLUX_MEMORY``) on a tiny Flux saved to disk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.generate.kiss3dgen import pipeline as kpipe
from models.generate.kiss3dgen.generate import generate_bundles
from models.generate.kiss3dgen.memory import (
    ACTIVATION_MARGIN_BYTES,
    MemoryModeError,
    choose_memory_mode,
    estimate_bytes,
)
from models.generate.kiss3dgen.params import Kiss3DGenParams, Kiss3DGenParamsError
from models.generate.kiss3dgen.pipeline import load_flux
from models.generate.kiss3dgen.tiny import save_tiny_flux
from tests.models.kiss3dgen_fixtures import tiny_params

torch = pytest.importorskip("torch")
GIB = 2**30
#: Flux.1-dev in bf16, by model (bytes), with ControlNet-Union.
FLUX_DEV_BYTES = {"transformer": 24 * GIB, "text_encoder_2": 9 * GIB, "text_encoder": GIB // 4,
                  "vae": GIB // 6, "controlnet": 7 * GIB}
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux", seed=0)


@pytest.fixture(autouse=True)
def _fresh_cache():
    kpipe.clear_cache()
    yield
    kpipe.clear_cache()


@pytest.mark.parametrize(
    ("free_gib", "mode"),
    [(80, "full"), (38, "offload"), (33, "fp8"), (10, "sequential")],
)
def test_auto_picks_the_best_mode_that_fits_the_free_gpu_memory(free_gib, mode):
    # full needs ~46.4 GiB, offload 31 + 6 = 37 (transformer + ControlNet resident), fp8 ~30.9.
    plan = choose_memory_mode("auto", CUDA, FLUX_DEV_BYTES, free_bytes=free_gib * GIB)
    assert plan.mode == mode
    assert f"{free_gib:.1f} GiB free" in plan.reason


def test_estimates_shrink_from_full_to_offload_to_fp8_to_sequential():
    needs = [estimate_bytes(FLUX_DEV_BYTES, m) for m in ("full", "offload", "fp8", "sequential")]
    assert needs == sorted(needs, reverse=True)
    assert needs[-1] == ACTIVATION_MARGIN_BYTES


def test_auto_on_a_cpu_is_full():
    assert choose_memory_mode("auto", torch.device("cpu"), FLUX_DEV_BYTES).mode == "full"


def test_sequential_and_nf4_on_a_cpu_are_clear_errors_naming_the_way_out():
    cpu = torch.device("cpu")
    with pytest.raises(MemoryModeError, match="use full or fp8"):
        choose_memory_mode("sequential", cpu, FLUX_DEV_BYTES)
    with pytest.raises(MemoryModeError, match="nf4 needs bitsandbytes on a CUDA GPU"):
        choose_memory_mode("nf4", cpu, FLUX_DEV_BYTES)


def test_an_unknown_memory_mode_is_rejected_by_name():
    with pytest.raises(Kiss3DGenParamsError, match="'half'"):
        Kiss3DGenParams.from_mapping({"memory_mode": "half"})


def test_the_loader_reports_its_resolved_mode(flux_dir):
    assert load_flux(tiny_params(flux_dir)).memory_plan.mode == "full"


def test_the_memory_mode_argument_overrides_the_params(flux_dir):
    pipe = load_flux(tiny_params(flux_dir, memory_mode="full"), memory_mode="fp8")
    assert pipe.memory_plan.mode == "fp8"


def test_fp8_stores_the_transformer_weights_in_float8_and_still_draws_the_bundle(flux_dir):
    params = tiny_params(flux_dir)
    pipe = load_flux(replace(params, memory_mode="fp8"))
    dtypes = {p.dtype for name, p in pipe.transformer.named_parameters() if "weight" in name}
    assert torch.float8_e4m3fn in dtypes
    full = generate_bundles(["a red mug"], [0], params)[0].raw_image.astype(int)
    kpipe.clear_cache()
    fp8 = generate_bundles(["a red mug"], [0], replace(params, memory_mode="fp8"))[0].raw_image
    assert fp8.shape == full.shape
    assert np.abs(fp8 - full).mean() < 8  # weight rounding only: close to the full model


def test_offload_gives_the_same_bundle_as_full(flux_dir):
    params = tiny_params(flux_dir)
    full = generate_bundles(["a red mug"], [0], params)[0].raw_image
    kpipe.clear_cache()
    offload = generate_bundles(["a red mug"], [0], replace(params, memory_mode="offload"))[0]
    # The same arithmetic; only rounding may differ (on some CPUs the moved weights take
    # another vector path): 2 of 24,576 values one level apart was seen.
    difference = np.abs(offload.raw_image.astype(int) - full.astype(int))
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.001


def test_nf4_on_this_cpu_fails_before_loading_with_a_clear_error(flux_dir):
    with pytest.raises(MemoryModeError, match="nf4"):
        load_flux(tiny_params(flux_dir, memory_mode="nf4"))


def test_the_contexts_memory_mode_reaches_the_loader_unless_the_manifest_overrides_it(flux_dir):
    from models.generate.base import GenerationRequest, GeneratorContext
    from models.generate.kiss3dgen.generate import params_for_request

    context = GeneratorContext(device="cpu", flux_path=str(flux_dir), flux_memory="fp8")
    request = GenerationRequest(kind="text", prompt="a mug", tile=32)
    assert params_for_request(request, context).memory_mode == "fp8"
    manifest = replace(request, params={"memory_mode": "full"})
    assert params_for_request(manifest, context).memory_mode == "full"
