#!/usr/bin/env bash
# The GPU checks of SDTP as the paper describes it (issue 15), in calls of the device `run` tool
# made back to back; the default model travels in two halves (.dev/m1, .dev/m2, see lib.sh), the
# training data (`sdtp train-predictor --export-data`, xz-compressed) and gguf-py (which the GPU host lacks) in
# .dev/m1 beside the first half:
#   bash scripts/device/sdtp_checks.sh build           (carry .dev/m1) keeps half 1, the data and
#        gguf-py; build; the pruning tests on CUDA; Llama-2-7B-shape bench, dense vs sdtp with the
#        paper's schedule and with the quarters schedule, 4K-32K (SDTP_SKIP_BENCH=1 skips it)
#   bash scripts/device/sdtp_checks.sh train [STEPS]   (carry .dev/m2) joins the model; the Python
#        trainer's tests (pytest) on the GPU host; trains the predictor with the full objective
#        (scripts/train/sdtp_train.py, STEPS steps of 4 sequences, default 1000, at most
#        SDTP_TRAIN_MINUTES minutes, default 5.5; SDTP_TRAIN_ARGS: more trainer options;
#        SDTP_SKIP_PYTEST=1 skips the tests; SDTP_TRAIN_DATA=.dev/m2/FILE.xz trains on that export
#        instead of the one carried in .dev/m1) into $OUT and /tmp/sdtp-train
#   bash scripts/device/sdtp_checks.sh eval LENS [N]   SmolLM2 on passkey, niah_single,
#        niah_multikey, vt, cwe, mdqa and ppl, N samples (default 50) per task at each length of
#        LENS: dense, sdtp (the new predictor, paper schedule), sdtp_quarters (the 3-stage
#        predictor; SDTP_NEW_LABEL renames the first), attn and random with the paper's schedule; the saliency oracle with the paper's
#        schedule runs beside them on the host's CPUs at the lengths in SDTP_SALIENCY_LENS (default
#        2048). SDTP_CONFIGS="dense sdtp" runs only those labels; SDTP_DEADLINE seconds (default 500).
# Full logs and results go to $OUT (at most 8 files come back: archives); the end of each log is printed.
set -u
source "$(dirname "$0")/lib.sh"
phase=${1:?usage: sdtp_checks.sh build|train [STEPS]|eval LENS [N]}
TRAIN=/tmp/sdtp-train
PY=/opt/torch/.venv/bin/python3
[[ -x $PY ]] || PY=python3
NEW_PREDICTOR=$TRAIN/SmolLM2-135M-Instruct.sdtp-paper.safetensors
OLD_PREDICTOR=predictors/SmolLM2-135M-Instruct.sdtp-quarters.safetensors
[[ -f $OLD_PREDICTOR ]] || OLD_PREDICTOR=$PREDICTOR

if [[ $phase == build ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  keep_half1
  mkdir -p $TRAIN && cp -r .dev/m1/pylib $TRAIN/ && python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    .dev/m1/train.safetensors.xz $TRAIN/train.safetensors &&
    echo "training data and gguf-py kept in $TRAIN"
  build
  timeout 150 $BIN/sdtp_tests --gtest_filter='*PrunedPrefill*:*BackendOps*:*Predictor*:*PrunePlan*:*Lazy*' \
    --gtest_brief=1 >"$OUT/tests.log" 2>&1
  echo "tests exit $?"; grep -E "PASSED|FAILED|SKIPPED" "$OUT/tests.log" | head -n 30
  grep -E -A8 "Failure" "$OUT/tests.log" | head -n 40
  for sched in paper quarters; do
    [[ -n ${SDTP_SKIP_BENCH:-} ]] && break
    echo "== bench: Llama-2-7B shape, dense vs sdtp ($sched schedule), 4K-32K"
    timeout 150 $BIN/sdtp bench --device cuda --random-weights llama2-7b -p 4096,8192,16384,32768 -n 32 -r 1 \
      --prune sdtp --prune-schedule $sched 2>&1 | tee "$OUT/bench_7b_sdtp_$sched.log" | grep -E "^\||pruned:"
  done
  exit 0
fi

if [[ $phase == train ]]; then
  steps=${2:-1000}
  minutes=${SDTP_TRAIN_MINUTES:-5.5}
  join_model
  if [[ -n ${SDTP_TRAIN_DATA:-} ]]; then  # another training set (xz), carried beside half 2
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$SDTP_TRAIN_DATA" $TRAIN/train.safetensors && echo "training data: $SDTP_TRAIN_DATA"
  fi
  export PYTHONPATH=$TRAIN/pylib
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  if [[ -z ${SDTP_SKIP_PYTEST:-} ]]; then
    SDTP_TEST_GGUF=$MODEL timeout 200 "$PY" -m pytest -q tests/python >"$OUT/pytest.log" 2>&1
    echo "pytest exit $?"; tail -n 15 "$OUT/pytest.log"
  fi
  t0=$(date +%s)
  # --max-minutes: training stops in time to evaluate and write the file within the call.
  # shellcheck disable=SC2086
  timeout $((${minutes%.*} * 60 + 120)) "$PY" scripts/train/sdtp_train.py --model "$MODEL" --data $TRAIN/train.safetensors --device cuda \
    --steps "$steps" --batch 4 --max-minutes "$minutes" --out $NEW_PREDICTOR \
    --log "$OUT/train_log.jsonl" ${SDTP_TRAIN_ARGS:-} >"$OUT/train.log" 2>&1
  echo "train exit $? in $(($(date +%s) - t0)) s"; tail -n 30 "$OUT/train.log"
  cp $NEW_PREDICTOR "$OUT/" 2>/dev/null
  exit 0
fi

if [[ $phase == eval ]]; then
  lens=${2:?lengths}
  samples=${3:-50}
  [[ -f $MODEL ]] || join_model
  [[ -f $NEW_PREDICTOR ]] || { echo "no trained predictor in $TRAIN: run the train phase first"; exit 1; }
  raw=/tmp/sdtp-evals
  mkdir -p "$raw"
  start=$(date +%s)
  tasks=(--task passkey --task niah_single --task niah_multikey --task vt --task cwe --task mdqa --task ppl)
  # The oracle computes its backward pass on the host's CPUs: beside the GPU runs, one task at a
  # time so that what finishes before the deadline is kept.
  sal_pid=
  if [[ -z ${SDTP_CONFIGS:-} || " $SDTP_CONFIGS " == *" saliency "* ]]; then
    (
      for len in ${SDTP_SALIENCY_LENS:-2048}; do
        for t in passkey niah_single vt niah_multikey mdqa cwe ppl; do
          (($(date +%s) - start > ${SDTP_DEADLINE:-500})) && break
          OMP_NUM_THREADS=12 timeout $((${SDTP_DEADLINE:-500} + start - $(date +%s) + 30)) $BIN/sdtp eval -m "$MODEL" \
            --device cuda --samples "$samples" --seed 42 --lengths "$len" --task $t --label saliency \
            --prune saliency --prune-schedule paper --out "$raw/eval_${len}_saliency_$t.json" \
            >"$raw/eval_${len}_saliency_$t.log" 2>&1
          echo "saliency $len $t exit $? at $(($(date +%s) - start)) s"
        done
      done
    ) &
    sal_pid=$!
  fi
  for len in ${lens//,/ }; do
    common=(-m "$MODEL" --device cuda --samples "$samples" --seed 42 --lengths "$len" "${tasks[@]}")
    configs=("dense|"
      "${SDTP_NEW_LABEL:-sdtp}|--prune sdtp --predictor $NEW_PREDICTOR"
      "sdtp_quarters|--prune sdtp --predictor $OLD_PREDICTOR"
      "attn|--prune attn --prune-schedule paper"
      "random|--prune random --prune-schedule paper")
    for cfg in "${configs[@]}"; do
      label=${cfg%%|*}
      opts=${cfg#*|}
      if [[ -n ${SDTP_CONFIGS:-} && " $SDTP_CONFIGS " != *" $label "* ]]; then continue; fi
      if (($(date +%s) - start > ${SDTP_DEADLINE:-500})); then echo "skipped $len $label: out of time"; continue; fi
      t0=$(date +%s)
      # shellcheck disable=SC2086
      OMP_NUM_THREADS=2 timeout 200 $BIN/sdtp eval "${common[@]}" --label "$label" $opts \
        --out "$raw/eval_${len}_${label}.json" >"$raw/eval_${len}_${label}.log" 2>&1
      echo "$len $label exit $? in $(($(date +%s) - t0)) s"
    done
  done
  [[ -n $sal_pid ]] && wait "$sal_pid"
  tar czf "$OUT/evals_${lens//,/_}.tgz" -C "$raw" .
  exit 0
fi
echo "unknown phase $phase"
exit 2
