#!/usr/bin/env bash
# Every GPU check in one command, on a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
# builds the CUDA kernels, runs the whole test suite (the CUDA cases run where a GPU is visible, and
# the pipelines train and infer on it), then the benchmarks at full scale on the GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # logs, JUnit XML and JSON reports (default: gpu-check/)
#
# BRAINKERNELS_CUDA_ARCHITECTURES narrows the build (e.g. 90 on a Hopper card: a third of the build time);
# on a machine with no package index, install the dependencies first and set PIP_NO_DEPS=1.
# To fit a time limit: GPU_CHECK_TESTS (pytest -k expression of the tests; default all),
# GPU_CHECK_TEST_TIMEOUT (seconds, default 1800), GPU_CHECK_WORKERS (pytest-xdist processes, default 8), GPU_CHECK_BENCHMARKS (files or node ids, default
# benchmarks/), GPU_CHECK_BENCHMARK_SELECT (pytest -k expression, default "not synth").
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
python -c "import xdist" 2>/dev/null && parallel=(-n "${GPU_CHECK_WORKERS:-8}")
timeout "${GPU_CHECK_TEST_TIMEOUT:-1800}" python -m pytest tests -q -p no:cacheprovider "${parallel[@]}" \
  -k "${GPU_CHECK_TESTS:-}" --junitxml "$out/tests.xml" >"$out/tests.log" 2>&1
tests_status=$?
grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -40

stage "benchmarks (full scale, on the GPU)"
# shellcheck disable=SC2086  # a list of files
python -m pytest ${GPU_CHECK_BENCHMARKS:-benchmarks} -q -p no:cacheprovider --bench-device cuda --bench-scale full \
  -k "${GPU_CHECK_BENCHMARK_SELECT:-not synth}" --bench-report "$out/bench.json" \
  --benchmark-json "$out/pytest-benchmark.json" >"$out/bench.log" 2>&1
bench_status=$?
sed -n '/ours beside the baselines/,/^---/p' "$out/bench.log"

stage "done: tests exit $tests_status, benchmarks exit $bench_status; logs in $out/"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
