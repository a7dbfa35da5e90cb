#!/usr/bin/env bash
# The GPU checks of KV-cache compression (issue 11), in calls of the device `run` tool made back to
# back; the default model travels in two halves (.dev/m1, .dev/m2, see gpu_checks.sh):
#   bash scripts/device/kv_checks.sh build        (carry .dev/m1) build, op/KV/session tests, 7B bench
#   bash scripts/device/kv_checks.sh prep         (carry .dev/m1) build, the same tests, eviction profile
#   bash scripts/device/kv_checks.sh check        build, backend/KV tests, one 7B bench at 8K
#   bash scripts/device/kv_checks.sh probe        (carry .dev/m2) joins the model; eval throughput, 1 vs 8 processes
#   bash scripts/device/kv_checks.sh eval LEN N   (carry .dev/m2) joins the model; every policy at
#        10/25/50% and the 40% combinations with sdtp, N samples per task at LEN tokens, in parallel
#        (timed out on 2026-12-01: evicting processes sharing one GPU are 10-30x slower)
#   bash scripts/device/kv_checks.sh final        7B bench, then one eval process at a time (model joined)
#   bash scripts/device/kv_checks.sh long         longest prompt that fits, dense vs compressed (7B)
#   bash scripts/device/kv_checks.sh half1        (carry .dev/m1) keeps the model's first half, builds
#   bash scripts/device/kv_checks.sh combo LEN N  (carry .dev/m2) joins the model; sdtp + vatp/h2o at
#        40% KV beside each alone and dense, niah_single and mdqa, one process at a time
# Full logs and eval JSON go to $OUT; the end of each log is printed.
set -u
source "$(dirname "$0")/lib.sh"
phase=${1:?usage: kv_checks.sh build|prep|check|probe|eval LEN N|final|long|half1|combo LEN N}

if [[ $phase == build ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  keep_half1
  build
  echo "== raw kernel tests (per-head caches first)"
  timeout 150 $BIN/sdtp_cuda_tests --gtest_filter='CudaKvHeads*' >"$OUT/cuda_kv_heads.log" 2>&1
  echo "exit code $?"; grep -E "PASSED|FAILED|SKIPPED|Failure" "$OUT/cuda_kv_heads.log" | head -n 20
  timeout 150 $BIN/sdtp_cuda_tests --gtest_filter='-CudaKvHeads*' --gtest_brief=1 >"$OUT/cuda_tests.log" 2>&1
  echo "exit code $?"; grep -E "PASSED|FAILED|SKIPPED" "$OUT/cuda_tests.log" | head -n 20
  echo "== backend ops, KV, sessions (CPU vs CUDA)"
  timeout 200 $BIN/sdtp_tests --gtest_filter='*BackendOps*:*Kv*:*Device*:-SmolLM2DevicesSlow.*' --gtest_brief=1 \
    >"$OUT/backend_kv.log" 2>&1
  echo "exit code $?"; grep -E "PASSED|FAILED|SKIPPED" "$OUT/backend_kv.log" | head -n 40
  grep -E -A8 "Failure" "$OUT/backend_kv.log" | head -n 60
  echo "== bench: Llama-2-7B shape, dense vs vatp 25% (evicting every 64 steps), 8K and 32K"
  timeout 200 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 8192,32768 -n 64 -r 2 \
    --kv-policy vatp --kv-budget 0.25 --kv-interval 64 2>&1 | tee "$OUT/bench_7b_kv.log"
  echo "== bench: eviction at every step (--kv-interval 1), 8K"
  timeout 100 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 8192 -n 16 -r 1 \
    --kv-policy vatp --kv-budget 0.25 --kv-interval 1 2>&1 | tee "$OUT/bench_7b_kv_interval1.log"
  exit 0
fi

if [[ $phase == prep ]]; then
  keep_half1
  build
  timeout 200 $BIN/sdtp_tests --gtest_filter='*BackendOps*:*Kv*:*Device*:-SmolLM2DevicesSlow.*' --gtest_brief=1 \
    >"$OUT/backend_kv.log" 2>&1
  echo "backend ops, KV, sessions (CPU vs CUDA): exit code $?"; grep -E "PASSED|FAILED|SKIPPED" "$OUT/backend_kv.log" | head -n 30
  grep -E -A8 "Failure" "$OUT/backend_kv.log" | head -n 30
  SDTP_KV_PROFILE=1 timeout 100 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 8192 -n 16 -r 1 \
    --kv-policy vatp --kv-budget 0.25 --kv-interval 1 2>&1 | grep -E "kv-profile|\| kv|\| dense"
  exit 0
fi

if [[ $phase == check ]]; then
  build
  timeout 60 $BIN/sdtp_tests --gtest_filter='*BackendOps*:*Kv*:-SmolLM2DevicesSlow.*' --gtest_brief=1 >"$OUT/t.log" 2>&1
  echo "tests exit $?"; grep -E "PASSED|FAILED" "$OUT/t.log" | head
  timeout 40 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 8192 -n 32 -r 1 --kv-policy vatp \
    --kv-budget 0.25 --kv-interval 64 2>&1 | grep "^| [dk]"
  exit 0
fi

if [[ $phase == probe ]]; then
  join_model
  t0=$(date +%s)
  $BIN/sdtp eval -m "$MODEL" --device cuda --samples 10 --task niah_single --lengths 4096 --out "$OUT/probe1.json" >/dev/null 2>&1
  echo "one process, 10 samples at 4K: $(($(date +%s) - t0)) s"
  t0=$(date +%s)
  for i in 1 2 3 4 5 6 7 8; do
    $BIN/sdtp eval -m "$MODEL" --device cuda --samples 10 --task niah_single --lengths 4096 --kv-policy vatp \
      --kv-budget 0.25 --seed $i --out "$OUT/probe8_$i.json" >/dev/null 2>&1 &
  done
  wait
  echo "8 processes x 10 samples at 4K (vatp 25%): $(($(date +%s) - t0)) s"
  exit 0
fi

if [[ $phase == eval ]]; then
  len=${2:?length}
  samples=${3:-50}
  join_model
  P=$PREDICTOR
  # Prefill compression only (--kv-interval 0), as kvpress's benchmark: the answers are short, and
  # eviction at every decode step syncs the device ~10 times per layer, which 30 processes sharing
  # one GPU turn into seconds per sample.
  common=(-m "$MODEL" --device cuda --samples "$samples" --seed 42 --lengths "$len" --task passkey
    --task niah_single --task niah_multikey --task vt)
  run() {  # label, options...
    local label=$1
    shift
    timeout 450 $BIN/sdtp eval "${common[@]}" --label "$label" "$@" --out "$OUT/eval_${len}_${label}.json" \
      >"$OUT/eval_${len}_${label}.log" 2>&1
    echo "$label exit $?" >>"$OUT/eval_${len}_status.txt"
  }
  t0=$(date +%s)
  run dense &
  for pol in vatp h2o snapkv pyramidkv tova knorm streaming random; do
    for b in 0.1 0.25 0.5; do run "${pol}_${b}" --kv-policy $pol --kv-budget $b --kv-interval 0 & done
  done
  run vatp_0.4 --kv-policy vatp --kv-budget 0.4 --kv-interval 0 &
  run h2o_0.4 --kv-policy h2o --kv-budget 0.4 --kv-interval 0 &
  run sdtp --prune sdtp --predictor $P &
  run sdtp+vatp_0.4 --prune sdtp --predictor $P --kv-policy vatp --kv-budget 0.4 --kv-interval 0 &
  run sdtp+h2o_0.4 --prune sdtp --predictor $P --kv-policy h2o --kv-budget 0.4 --kv-interval 0 &
  wait
  echo "sweep at $len took $(($(date +%s) - t0)) s"
  sort "$OUT/eval_${len}_status.txt" | tr '\n' ';'
  echo
  tail -n 9 "$OUT/eval_${len}_dense.log" "$OUT/eval_${len}_vatp_0.25.log"
  exit 0
fi

if [[ $phase == final ]]; then
  # One process at a time: eviction's host selection syncs the device per layer, which processes
  # sharing the GPU turn into timeouts (the parallel sweep above did not finish).
  timeout 90 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 8192,32768 -n 64 -r 1 \
    --kv-policy vatp --kv-budget 0.25 --kv-interval 64 2>&1 | tee "$OUT/bench_7b_kv.log" | grep "^|"
  export SDTP_MODEL=$MODEL
  for cfg in "vatp 0.25" "h2o 0.25" "snapkv 0.25" "streaming 0.25"; do
    set -- $cfg
    t0=$(date +%s)
    timeout 60 $BIN/sdtp eval -m "$MODEL" --device cuda --samples 50 --seed 42 --lengths 4096 --task passkey \
      --task niah_single --kv-policy $1 --kv-budget $2 --kv-interval 0 --label "$1_$2" \
      --out "$OUT/e_$1_$2.json" >"$OUT/e_$1_$2.log" 2>&1
    echo "$1 $2 exit $? in $(($(date +%s) - t0)) s"; grep -E "^\| (passkey|niah_single) " "$OUT/e_$1_$2.log"
  done
  exit 0
fi

if [[ $phase == half1 ]]; then
  keep_half1
  build
  exit 0
fi

if [[ $phase == combo ]]; then
  # Pruning and eviction together (issue 11): SDTP + VATP/H2O at 40% of the KV entries beside
  # each alone and dense; prefill compression only (--kv-interval 0), one process at a time.
  len=${2:?length}
  samples=${3:-50}
  join_model
  P=$PREDICTOR
  raw=/tmp/sdtp-combo
  mkdir -p "$raw"
  start=$(date +%s)
  for cfg in "dense|" "sdtp|--prune sdtp --predictor $P" "vatp_0.4|--kv-policy vatp --kv-budget 0.4 --kv-interval 0" \
    "h2o_0.4|--kv-policy h2o --kv-budget 0.4 --kv-interval 0" \
    "sdtp+vatp_0.4|--prune sdtp --predictor $P --kv-policy vatp --kv-budget 0.4 --kv-interval 0" \
    "sdtp+h2o_0.4|--prune sdtp --predictor $P --kv-policy h2o --kv-budget 0.4 --kv-interval 0"; do
    label=${cfg%%|*}
    opts=${cfg#*|}
    if (($(date +%s) - start > ${COMBO_DEADLINE:-330})); then echo "skipped $label: out of time"; continue; fi
    t0=$(date +%s)
    # shellcheck disable=SC2086
    timeout 120 $BIN/sdtp eval -m "$MODEL" --device cuda --samples "$samples" --seed 42 --lengths "$len" \
      --task niah_single --task mdqa --label "$label" $opts --out "$raw/eval_${len}_${label}.json" \
      >"$raw/eval_${len}_${label}.log" 2>&1
    echo "$label exit $? in $(($(date +%s) - t0)) s"; grep -E "^\| (niah_single|mdqa) " "$raw/eval_${len}_${label}.log"
  done
  tar czf "$OUT/combo_${len}.tgz" -C "$raw" .
  exit 0
fi

if [[ $phase == long ]]; then
  [[ -x $BIN/sdtp ]] || build
  echo "== the longest prompt: Llama-2-7B shape, dense vs vatp 25%, 128K and 256K"
  timeout 500 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 131072,262144 -n 4 -r 1 \
    --kv-policy vatp --kv-budget 0.25 --kv-interval 0 2>&1 | tee "$OUT/bench_7b_long.log"
  exit 0
fi
echo "unknown phase $phase"; exit 2
