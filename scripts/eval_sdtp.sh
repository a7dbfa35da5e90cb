#!/usr/bin/env bash
# The earlier CPU SDTP comparison of docs/sdtp.md: dense against sdtp (the 3-stage predictor), random and attn
# at the same plan (3 stages at 1/4, 1/2, 3/4 of the depth, keep 0.7 each: 65.7% of the prompt
# pruned by the last stage), then a keep-ratio sweep at 4K for the accuracy-vs-keep-ratio plot.
#   scripts/eval_sdtp.sh OUT_DIR [METHOD ...]      (methods: dense sdtp random attn saliency sweep)
# Needs build/sdtp (scripts/run.sh builds it) and the default model (scripts/fetch_model.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: eval_sdtp.sh OUT_DIR [METHOD ...]}"; shift
methods=("$@"); ((${#methods[@]})) || methods=(dense sdtp random attn sweep)
sdtp="${SDTP_BIN:-$here/build/sdtp}"
model="${SDTP_MODEL:-$HOME/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
predictor="${SDTP_PREDICTOR:-$here/predictors/SmolLM2-135M-Instruct.sdtp-quarters.safetensors}"
threads="${SDTP_THREADS:-2}"
samples="${SDTP_SAMPLES:-5}"
mkdir -p "$out"
common=(-m "$model" -t "$threads" --samples "$samples" --seed 42)
prune_args() {  # method [keep ratio]
  case "$1" in
    dense) ;;
    sdtp) echo --prune sdtp --predictor "$predictor" ${2:+--keep-ratio $2} ;;
    *) echo --prune "$1" ${2:+--keep-ratio $2} ;;
  esac
}
for m in "${methods[@]}"; do
  if [[ $m == sweep ]]; then
    for r in 0.5 0.85; do
      for s in sdtp random attn; do
        # shellcheck disable=SC2046
        "$sdtp" eval "${common[@]}" --task passkey --task niah_single --lengths 4096 --label "$s-$r" \
          $(prune_args "$s" "$r") --out "$out/sweep_${s}_$r.json"
      done
    done
    continue
  fi
  # shellcheck disable=SC2046
  "$sdtp" eval "${common[@]}" --task passkey --task niah_single --task ppl --ppl-tail 64 \
    --lengths 2048,4096,8192 --label "$m" $(prune_args "$m") --out "$out/$m.json"
done
