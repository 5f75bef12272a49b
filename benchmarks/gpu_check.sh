#!/usr/bin/env bash
# Every GPU check in one command, on a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
# builds the CUDA kernels, runs the whole test suite (the CUDA cases run where a GPU is visible, and
# the pipelines train and infer on it), then the benchmarks at full scale on the GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # logs, JUnit XML and JSON reports (default: gpu-check/)
#
# BRAINKERNELS_CUDA_ARCHITECTURES narrows the build (e.g. 90 on a Hopper card: a third of the build time);
# on a machine with no package index, install the dependencies first and set PIP_NO_DEPS=1.
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
started=$SECONDS
stage() { echo "[$((SECONDS - started)) s] $*"; }

stage "building with CUDA"
if ! BRAINKERNELS_CUDA=on python -m pip install --no-build-isolation -e . >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  exit 1
fi
python -m brainkernels info | tee "$out/info.txt"

stage "tests"
parallel=()
python -c "import xdist" 2>/dev/null && parallel=(-n 8)
python -m pytest tests -q -p no:cacheprovider "${parallel[@]}" --junitxml "$out/tests.xml" >"$out/tests.log" 2>&1
tests_status=$?
grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -40

stage "benchmarks (full scale, on the GPU)"
python -m pytest benchmarks -q -p no:cacheprovider --bench-device cuda --bench-scale full -k "not synth" \
  --bench-report "$out/bench.json" >"$out/bench.log" 2>&1
bench_status=$?
sed -n '/ours beside the baselines/,/^---/p' "$out/bench.log"

stage "done: tests exit $tests_status, benchmarks exit $bench_status; logs in $out/"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
