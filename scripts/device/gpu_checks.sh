#!/usr/bin/env bash
# The GPU checks of the one-engine work, in two calls of the workplace's device `run` tool made back
# to back (the default model is 98 MB and one call carries 64 MiB, so each call carries one half of
# it, split here with `split -n 2` into the git-ignored .dev/m1 and .dev/m2):
#   bash scripts/device/gpu_checks.sh build   (carry .dev/m1)  builds, unit tests, Llama-2-7B bench
#   bash scripts/device/gpu_checks.sh model   (carry .dev/m2)  joins the model, real-model checks, evals
# Full logs go to $OUT; the end of each log is printed.
set -u
source "$(dirname "$0")/lib.sh"
phase=${1:?usage: gpu_checks.sh build|model [eval-samples]}

if [[ $phase == build ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  keep_half1
  build
  echo "== backend ops (every op of the Session, CPU vs CUDA)"
  timeout 120 $BIN/sdtp_tests --gtest_filter='*BackendOps*:*Device*:-SmolLM2DevicesSlow.*' --gtest_brief=1 >"$OUT/backend_ops.log" 2>&1
  echo "exit code $?"; grep -E "PASSED|FAILED|SKIPPED|^\[" "$OUT/backend_ops.log" | grep -v "^\[ *OK" | head -n 40
  grep -E -A6 "Failure" "$OUT/backend_ops.log" | head -n 40
  echo "== raw kernel tests"
  timeout 200 $BIN/sdtp_cuda_tests --gtest_brief=1 >"$OUT/cuda_tests.log" 2>&1
  echo "exit code $?"; grep -E "PASSED|FAILED|SKIPPED" "$OUT/cuda_tests.log" | head -n 20
  echo "== bench: Llama-2-7B shape, random weights, dense and sdtp side by side"
  timeout 300 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 4096,8192,16384,32768 -n 16 -r 3 \
    --prune sdtp 2>&1 | tee "$OUT/bench_7b.log"
  exit 0
fi

if [[ $phase == model ]]; then
  samples=${2:-50}
  join_model
  export SDTP_MODEL=$MODEL
  echo "== CPU kernel variants against the scalar reference (this host has AVX-512)"
  timeout 120 $BIN/sdtp_tests --gtest_filter='Isa/CpuKernels.*' --gtest_brief=1 2>&1 | grep -E "PASSED|FAILED|SKIPPED" | head -n 12
  echo "== SmolLM2 on the GPU vs the CPU float32 path"
  timeout 300 $BIN/sdtp_tests --gtest_filter='SmolLM2DevicesSlow.*' >"$OUT/smollm2.log" 2>&1
  echo "exit code $?"; grep -E "^\[smollm2|PASSED|FAILED|SKIPPED" "$OUT/smollm2.log" | head -n 40
  echo "== Wilson intervals, statsmodels (the reference of tests/eval/test_metrics.cpp)"
  python3 -c "from statsmodels.stats.proportion import proportion_confint as c; print([c(k, 50, method='wilson') for k in (45, 0, 50)])" 2>&1 | tail -n 1
  echo "== generate on cuda"
  $BIN/sdtp generate -m "$MODEL" --chat -p "What is the capital of France?" --temp 0 --device cuda 2>&1 | tail -n 3
  echo "== eval on cuda: passkey + niah_single at 2K/4K/8K, $samples samples per point"
  P=$PREDICTOR
  common=(-m "$MODEL" --device cuda --samples "$samples" --seed 42 --task passkey --task niah_single
    --lengths 2048,4096,8192)
  timeout 200 $BIN/sdtp eval "${common[@]}" --label dense --out "$OUT/eval_dense.json" >"$OUT/eval_dense.log" 2>&1
  echo "dense exit $?"; tail -n 12 "$OUT/eval_dense.log"
  timeout 200 $BIN/sdtp eval "${common[@]}" --label sdtp --prune sdtp --predictor $P --out "$OUT/eval_sdtp.json" \
    >"$OUT/eval_sdtp.log" 2>&1
  echo "sdtp exit $?"; tail -n 12 "$OUT/eval_sdtp.log"
  exit 0
fi
echo "unknown phase $phase"; exit 2
