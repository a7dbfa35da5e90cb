#!/usr/bin/env bash
# The GPU checks of LazyLLM (issue 10), in calls of the device `run` tool made back to back; the
# default model travels in two halves (.dev/m1, .dev/m2, see gpu_checks.sh):
#   bash scripts/device/lazy_checks.sh build            (carry .dev/m1) build, lazyllm/KV/op tests on
#        CUDA, Llama-2-7B-shape bench: dense vs lazyllm and dense vs sdtp at 4K-32K
#   bash scripts/device/lazy_checks.sh tests            build, lazyllm/KV tests on CUDA, 7B bench at 8K/32K
#   bash scripts/device/lazy_checks.sh eval LENS [N]    (carry .dev/m2) joins the model; SmolLM2 on
#        passkey, niah_single, niah_multikey, vt and mdqa, N samples (default 50) per task at each
#        length of LENS (comma-separated): dense, lazyllm/attn/random/sdtp at one plan, lazyllm at
#        more ratios; one process at a time, stopping before the call's time runs out
#        (LAZY_CONFIGS="dense lazyllm" runs only those labels; LAZY_DEADLINE seconds, default 470)
# Full logs and eval JSON go to $OUT; the end of each log is printed.
set -u
source "$(dirname "$0")/lib.sh"
phase=${1:?usage: lazy_checks.sh build|tests|eval LENS [N]}

if [[ $phase == build ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  keep_half1
  build
  timeout 150 $BIN/sdtp_tests --gtest_filter='*Lazy*:*PlaceAppended*:*AuxCache*:*PrunedPrefill*:*BackendOps*:*KvOnDevice*' \
    --gtest_brief=1 >"$OUT/tests.log" 2>&1
  echo "tests exit $?"; grep -E "PASSED|FAILED|SKIPPED" "$OUT/tests.log" | head -n 30
  grep -E -A8 "Failure" "$OUT/tests.log" | head -n 40
  for m in lazyllm sdtp; do
    echo "== bench: Llama-2-7B shape, dense vs $m (default plan), 4K-32K"
    timeout 150 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 4096,8192,16384,32768 -n 32 -r 1 \
      --prune $m 2>&1 | tee "$OUT/bench_7b_$m.log" | grep -E "^\|"
  done
  exit 0
fi

if [[ $phase == tests ]]; then
  keep_half1
  build
  timeout 150 $BIN/sdtp_tests --gtest_filter='*Lazy*:*PlaceAppended*:*AuxCache*:*PrunedPrefill*:*Revival*' \
    >"$OUT/tests.log" 2>&1
  echo "tests exit $?"; grep -E "PASSED|FAILED|SKIPPED|\[lazyllm\]" "$OUT/tests.log" | head -n 30
  grep -E -A8 "Failure" "$OUT/tests.log" | head -n 40
  timeout 150 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 8192,32768 -n 32 -r 1 --prune lazyllm 2>&1 |
    tee "$OUT/bench_7b_lazyllm.log" | grep -E "^\||^ *\*|revived"
  exit 0
fi

if [[ $phase == eval ]]; then
  lens=${2:?lengths}
  samples=${3:-50}
  join_model
  P=$PREDICTOR
  plan=(--keep-ratio 0.8,0.7,0.6)
  raw=/tmp/sdtp-evals
  mkdir -p "$raw"
  start=$(date +%s)
  for len in ${lens//,/ }; do
    common=(-m "$MODEL" --device cuda --samples "$samples" --seed 42 --lengths "$len" --task passkey
      --task niah_single --task niah_multikey --task vt --task mdqa)
    configs=("dense|"
      "lazyllm|--prune lazyllm ${plan[*]}"
      "attn|--prune attn ${plan[*]}"
      "random|--prune random ${plan[*]}"
      "sdtp|--prune sdtp --predictor $P ${plan[*]}"
      "lazyllm_0.5|--prune lazyllm --keep-ratio 0.5"
      "lazyllm_0.3|--prune lazyllm --keep-ratio 0.3"
      "attn_0.5|--prune attn --keep-ratio 0.5")
    for cfg in "${configs[@]}"; do
      label=${cfg%%|*}
      opts=${cfg#*|}
      # LAZY_CONFIGS="dense lazyllm": only these labels.
      if [[ -n ${LAZY_CONFIGS:-} && " $LAZY_CONFIGS " != *" $label "* ]]; then continue; fi
      if (($(date +%s) - start > ${LAZY_DEADLINE:-470})); then echo "skipped $len $label: out of time"; continue; fi
      t0=$(date +%s)
      # shellcheck disable=SC2086
      timeout 200 $BIN/sdtp eval "${common[@]}" --label "$label" $opts --out "$raw/eval_${len}_${label}.json" \
        >"$raw/eval_${len}_${label}.log" 2>&1
      echo "$len $label exit $? in $(($(date +%s) - t0)) s"
    done
  done
  # At most 8 files come back from $OUT: one archive.
  tar czf "$OUT/evals_${lens//,/_}.tgz" -C "$raw" .
  exit 0
fi
echo "unknown phase $phase"; exit 2
