#!/usr/bin/env bash
# Builds everything and runs all tests on a fresh machine: dependencies, the default model, the
# Release build with every test (the slow real-model ones included), then an AddressSanitizer +
# UBSan build that runs the unit tests (mutated model files included) again.
# SDTP_QUICK=1 skips the slow tests and the sanitizer pass. Each test process runs one thread
# (OMP_NUM_THREADS=1) while ctest runs one process per core, so no core is oversubscribed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
jobs="$(nproc)"
"$root/scripts/setup.sh"

cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build" -j"$jobs"

# `sdtp serve` against the real `openai` client (PyPI), in a venv of its own under ~/.cache/sdtp.
openai_tests() {
  local venv="${SDTP_CACHE:-$HOME/.cache/sdtp}/venv-serve"
  if [[ ! -x "$venv/bin/pytest" ]] || ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check openai pytest
  fi
  local model
  model="${SDTP_MODEL:-$("$root/scripts/fetch_model.sh")}"
  (cd "$root" && SDTP_BIN="$root/build/sdtp" SDTP_MODEL="$model" OMP_NUM_THREADS=2 "$venv/bin/python" -m pytest -q tests/server)
}

if [[ "${SDTP_QUICK:-0}" == 1 ]]; then
  (cd "$root/build" && OMP_NUM_THREADS=1 ctest --output-on-failure -j"$jobs" -E Slow)
  openai_tests
  exit 0
fi
(cd "$root/build" && OMP_NUM_THREADS=1 ctest --output-on-failure -j"$jobs")
openai_tests

# The full-objective trainer's tests (PyTorch) run where a Python with torch, safetensors and pytest
# is at hand ($SDTP_PYTHON, else python3): the GPU host has one (scripts/device/sdtp_checks.sh
# train); the torch wheels are too large to install here, so otherwise they are skipped, visibly.
py="${SDTP_PYTHON:-python3}"
if "$py" -c "import torch, safetensors, pytest" 2>/dev/null; then
  (cd "$root" && OMP_NUM_THREADS=2 "$py" -m pytest -q tests/python)
else
  echo "tests/python: SKIPPED: $py has no torch/safetensors/pytest (set SDTP_PYTHON to one that has them)"
fi

# The CUDA kernels run only on a GPU machine; the sanitizer pass covers the host code.
cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSDTP_ASAN=ON -DSDTP_CUDA=OFF >/dev/null
cmake --build "$root/build-asan" -j"$jobs" --target sdtp_tests sdtp
(cd "$root/build-asan" && OMP_NUM_THREADS=1 ctest --output-on-failure -j"$jobs" -E Slow)
# The server's threads (HTTP pool, slot workers, cancellation, shutdown) under the sanitizers too,
# on the real model: the short in-process server tests.
(cd "$root/build-asan" && OMP_NUM_THREADS=1 ./sdtp_tests --gtest_brief=1 \
  --gtest_filter='ServerSlow.ClientThatDisconnectsFreesItsSequence:ServerSlow.KeysLimitsRoutesAndTheQueue:ServerSlow.ShutdownFinishesARunningStream')
