#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, fetch the default model
# (SmolLM2-135M-Instruct Q4_1) and answer a chat prompt with it. Extra arguments go to `sdtp generate`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build" -j"$(nproc)" --target sdtp
model="$("$root/scripts/fetch_model.sh")"
if (($#)); then
  exec "$root/build/sdtp" generate -m "$model" "$@"
fi
exec "$root/build/sdtp" generate -m "$model" --chat -p "What is the capital of France?" --temp 0 -n 64
