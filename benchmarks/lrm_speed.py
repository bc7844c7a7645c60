"""Time the LRM init backend with random weights: bundle -> triplanes -> FlexiCubes mesh.

Usage: ``python benchmarks/lrm_speed.py [--variant instant-mesh-large] [--device cuda]
[--grid-res 128] [--repeats 3] [--extractor flexicubes]``

Prints one JSON line: seconds per mesh (median of the repeats, after one warm-up), split into
the network (encoder + transformer) and the surface (grid queries + extraction + colours),
peak memory (CUDA allocator peak on GPU, process max RSS on CPU) and the mesh size. The SDF
head is shifted so the random prediction has a surface (the extraction's cost depends on it).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.bundle.spec import Bundle, BundleSpec, encode_normals
from models.reconstruct.lrm.cameras import model_inputs
from models.reconstruct.lrm.config import get_config
from models.reconstruct.lrm.model import LRM


def disc_bundle(tile: int = 512) -> Bundle:
    """Four views of a coloured disc on white, front-facing normals under it."""
    colours = np.full((4, tile, tile, 3), 255, np.uint8)
    normals = np.full((4, tile, tile, 3), 255, np.uint8)
    yy, xx = np.mgrid[:tile, :tile]
    disc = (xx - tile / 2) ** 2 + (yy - tile / 2) ** 2 < (0.38 * tile) ** 2
    for view in range(4):
        colours[view][disc] = (60 * view, 120, 200 - 40 * view)
        normals[view][disc] = encode_normals(np.array([0.0, 0.0, 1.0]))
    return Bundle.from_tiles(colours, normals, BundleSpec())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="instant-mesh-large")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grid-res", type=int, default=None, help="default: the variant's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extractor", default="flexicubes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = get_config(args.variant)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = LRM(cfg).eval()
    images, cams = model_inputs(disc_bundle(), cfg.input_size, cfg.camera_radius)
    images, cams = images.to(args.device), cams.to(args.device)
    with torch.no_grad():
        planes = model.forward_planes(images, cams)
        probe = torch.rand(4096, 3, device=args.device) * 1.6 - 0.8
        sdf = model.synthesizer.decoder.net_sdf(model.synthesizer.features(planes, probe[None]))
        model.synthesizer.decoder.net_sdf[-1].bias -= sdf.median()

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    net_times, surface_times, mesh = [], [], None
    for i in range(args.repeats + 1):
        sync(args.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            planes = model.forward_planes(images, cams)
        sync(args.device)
        t1 = time.perf_counter()
        mesh = model.extract_mesh(planes, grid_res=args.grid_res, extractor=args.extractor)
        sync(args.device)
        t2 = time.perf_counter()
        if i > 0:  # the first pass warms up kernels and allocators
            net_times.append(t1 - t0)
            surface_times.append(t2 - t1)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
        device_name = torch.cuda.get_device_name()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        device_name = "cpu"
    net, surface = statistics.median(net_times), statistics.median(surface_times)
    print(json.dumps({
        "variant": cfg.name,
        "device": device_name,
        "grid_res": args.grid_res or cfg.grid_res,
        "extractor": args.extractor,
        "seconds_per_mesh": round(net + surface, 3),
        "network_s": round(net, 3),
        "surface_s": round(surface, 3),
        "peak_memory_gib": round(peak, 2),
        "vertices": int(mesh.vertices.shape[0]),
        "faces": int(mesh.faces.shape[0]),
    }))


if __name__ == "__main__":
    main()
