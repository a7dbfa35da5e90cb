#!/usr/bin/env bash
# Regenerates every reference fixture under tests/fixtures/ by running each
# scripts/fixtures/gen_*.py with a Python that has torch, transformers, gguf, tokenizers,
# safetensors, numpy and accelerate (transformers needs accelerate to load GGUF files).
#
# Usage (from anywhere):  scripts/gen_fixtures.sh [extra args passed to every generator]
#   PYTHON=/path/to/python  use that interpreter instead of creating/using ./.venv
#   SDTP_MODEL=/path/x.gguf the real model for the fixtures that need it
#                           (default ~/.cache/sdtp/models/SmolLM2-135M-Instruct.Q4_1.gguf)
# Nothing is downloaded from a model hub; the venv is installed from PyPI only when missing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x /opt/refvenv/bin/python ]]; then
    PYTHON=/opt/refvenv/bin/python
  else
    if [[ ! -x .venv/bin/python ]]; then
      python3 -m venv .venv
      .venv/bin/pip install torch transformers gguf tokenizers safetensors numpy accelerate
    fi
    PYTHON=.venv/bin/python
  fi
fi

shopt -s nullglob
scripts=(scripts/fixtures/gen_*.py)
if (( ${#scripts[@]} == 0 )); then
  echo "gen_fixtures.sh: no scripts/fixtures/gen_*.py found" >&2
  exit 1
fi
for s in "${scripts[@]}"; do
  echo "== $s"
  "$PYTHON" "$s" "$@"
done
echo "== fixtures:"
du -sh tests/fixtures/* 2>/dev/null || true
