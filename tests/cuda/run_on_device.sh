#!/usr/bin/env bash
# One call on the GPU machine (the workplace's `run` tool, from the repo root):
#   bash tests/cuda/run_on_device.sh
# Builds the CUDA backend and sdtp_cuda_tests there (CMake, Release) and runs them; if that
# machine lacks one of sdtp_core's build dependencies, runs the binaries carried in
# build-cuda-port/devrun instead (built here with -DSDTP_NATIVE=OFF, plus the shared libraries the
# GPU image may lack). Then the timings (sdtp_cuda_bench), PyTorch's SDPA at the same shapes, and
# compute-sanitizer on the smaller tests. Full logs go to $OUT.
set -u
OUT=${OUT:-/tmp/sdtp-cuda-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
BIN=build-dev
if cmake -S . -B build-dev -DCMAKE_BUILD_TYPE=Release >"$OUT/configure.log" 2>&1 &&
  cmake --build build-dev -j16 --target sdtp_cuda_tests sdtp_cuda_bench >"$OUT/build.log" 2>&1; then
  echo "built on the device: $(grep -c 'Building' "$OUT/build.log") objects"
else
  tail -n 8 "$OUT/configure.log" "$OUT/build.log" 2>/dev/null
  echo "device build failed: running the carried binaries"
  BIN=build-cuda-port/devrun
  export LD_LIBRARY_PATH=$PWD/$BIN/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
fi
echo "== tests"
"$BIN/sdtp_cuda_tests" --gtest_brief=1 >"$OUT/tests.log" 2>&1
echo "sdtp_cuda_tests exit code $?"
grep -E "^\[cuda\]|FAILED|PASSED|SKIPPED" "$OUT/tests.log"
grep -E -A3 "Failure" "$OUT/tests.log" | head -n 30
echo "max error per op (over all its [cuda-err] lines; rel = max_abs / max |cpu|):"
awk '/^\[cuda-err\]/ { op = $2 " " $3; if ($2 != "matmul") op = $2;
  for (i = 1; i <= NF; ++i) { if ($i == "max_abs") a = $(i + 1); if ($i == "rel") r = $(i + 1) }
  if (!(op in R) || r + 0 > R[op] + 0) { R[op] = r; A[op] = a } N[op]++ }
  END { for (o in R) printf "  %-22s %3d checks  max rel %s  (max_abs %s)\n", o, N[o], R[o], A[o] }' "$OUT/tests.log" | sort
echo "== bench"
"$BIN/sdtp_cuda_bench" 2>&1 | tee "$OUT/bench.log"
echo "== torch reference"
timeout 120 python3 tests/cuda/time_sdpa.py 2>&1 | tee "$OUT/torch.log" | tail -n 8
echo "== compute-sanitizer"
timeout 150 compute-sanitizer --tool memcheck "$BIN/sdtp_cuda_tests" \
  --gtest_filter='*Unsorted*:*TopK*:*Gather*:*Rmsnorm*:*Rope*:*Swiglu*:*Matmul*' >"$OUT/memcheck.log" 2>&1
echo "memcheck exit $?: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -n 1)"
timeout 120 compute-sanitizer --tool racecheck "$BIN/sdtp_cuda_tests" --gtest_filter='*Unsorted*:*TopK*' \
  >"$OUT/racecheck.log" 2>&1
echo "racecheck exit $?: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.log" | tail -n 1)"
