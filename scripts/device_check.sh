#!/usr/bin/env bash
# One short run on a GPU machine: the CUDA tests, then the GPU benchmarks, results in $OUT
# (or ./device_out). Everything here also runs, skipped or on the CPU, without a GPU.
#   bash scripts/device_check.sh
set -u
OUT=${OUT:-device_out}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
# tests that exercise a device (the CUDA parameters run only where CUDA is)
timeout 900 "$PY" -m pytest -q -x tests/core/test_device.py tests/zoo/test_stacked.py \
    > "$OUT/tests.txt" 2>&1; echo "tests rc=$?" | tee -a "$OUT/tests.txt"
# zoo training throughput on the GPU (in-process cases), and alignment costs on the GPU
timeout 900 "$PY" scripts/benchmarks/zoo_throughput.py --device cuda --case mlp --case resnet \
    --repeat 1 > "$OUT/zoo_throughput.txt" 2>&1
timeout 300 "$PY" scripts/benchmarks/zoo_throughput.py --device cuda --eval --case mlp \
    --case resnet > "$OUT/eval_throughput.txt" 2>&1
timeout 600 "$PY" scripts/benchmarks/align_speed.py --device cuda --only mlp resnet20 resnet18 w16 \
    > "$OUT/align_speed.txt" 2>&1
tail -n 3 "$OUT"/*.txt
