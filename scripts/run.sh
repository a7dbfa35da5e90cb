#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, fetch the default model
# (SmolLM2-135M-Instruct Q4_1), answer a chat prompt with it, then find a pass key hidden in a
# ~2.2K-token prompt with SDTP pruning (the shipped predictor drops 61% of the prompt by layer 28)
# and report the tokens alive per layer, FLOPs and speedup over a dense prefill.
# Extra arguments go to one `sdtp generate` instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build" -j"$(nproc)" --target sdtp
model="$("$root/scripts/fetch_model.sh")"
if (($#)); then
  exec "$root/build/sdtp" generate -m "$model" "$@"
fi
"$root/build/sdtp" generate -m "$model" --chat -p "What is the capital of France?" --temp 0 -n 64
echo
prompt="$(mktemp)"
trap 'rm -f "$prompt"' EXIT
fortunes=/usr/share/games/fortunes/fortunes  # Debian fortunes-min
# Byte offsets (LC_ALL=C). The 135M model is fragile: for some placements of the key even the dense
# model answers something else, so this demo is one placement both dense and pruned get right.
text="$(LC_ALL=C grep -v '^%$' "$fortunes" | LC_ALL=C tr -s ' \n' ' ')"
LC_ALL=C printf '%s\nThe pass key is 68217. Remember it. 68217 is the pass key.\n%s\nWhat is the pass key?\n' \
  "$(LC_ALL=C; echo "${text:0:4500}")" "$(LC_ALL=C; echo "${text:4499:4500}")" >"$prompt"
echo "SDTP: a pass key in a $(wc -c <"$prompt")-byte prompt, 10% of the alive tokens dropped at each of 9 layers in prefill:"
"$root/build/sdtp" generate -m "$model" --chat -f "$prompt" --temp 0 -n 16 \
  --prune sdtp --predictor "$root/predictors/SmolLM2-135M-Instruct.sdtp.safetensors" --compare-dense
