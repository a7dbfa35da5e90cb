#!/usr/bin/env bash
# The server on the GPU host, in two device calls made back to back (lib.sh: the model in halves):
#   bash scripts/device/serve_checks.sh build   (carry .dev/m1: model half 1 + a header-only httplib.h)
#       builds with the server, runs the device tests and the server's in-process tests
#   bash scripts/device/serve_checks.sh load    (carry .dev/m2: model half 2)
#       `sdtp serve --device cuda` at --parallel 1 and 16, bench/server_load.py at 1/8/32/64 streams
set -u
source "$(dirname "$0")/lib.sh"
phase=${1:?usage: serve_checks.sh build|load}

if [[ $phase == build ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  keep_half1
  build
  grep -E "SDTP_SERVER" $BIN/CMakeCache.txt
  echo "== device tests (Session, KV, LazyLLM on cuda; backend ops)"
  timeout 200 $BIN/sdtp_tests --gtest_filter='*BackendOps*:*Device*:-SmolLM2DevicesSlow.*' --gtest_brief=1 >"$OUT/device_tests.log" 2>&1
  echo "exit code $?"; grep -E "PASSED|FAILED|SKIPPED" "$OUT/device_tests.log" | head -n 30
  echo "== server unit tests"
  timeout 60 $BIN/sdtp_tests --gtest_filter='ServerApi.*' --gtest_brief=1 2>&1 | grep -E "PASSED|FAILED" | head
  exit 0
fi

if [[ $phase == load ]]; then
  join_model
  serve_and_load() {  # $1 label, rest: serve options
    local label=$1; shift
    $BIN/sdtp serve -m "$MODEL" --port 8090 --quiet -c 4096 "$@" 2>"$OUT/serve_$label.log" &
    local pid=$!
    for _ in $(seq 100); do curl -sf localhost:8090/health >/dev/null 2>&1 && break; sleep 0.2; done
    timeout 240 python3 bench/server_load.py --url http://127.0.0.1:8090 --levels "${LEVELS:-1,8,32,64}" --requests "${REQS:-64}" \
      --max-tokens 64 --prompt-words 200 --label "$label" --json "$OUT/load_$label.json"
    curl -s localhost:8090/metrics | grep -E "^sdtp_(requests_total|completion|running|kv_bytes|queue)" | head -n 12
    kill -TERM $pid; wait $pid; echo "serve exit $?"; tail -n 2 "$OUT/serve_$label.log"
  }
  echo "== SmolLM2 on cuda, 16 slots"
  serve_and_load cuda-p16 --device cuda --parallel 16 --queue 128
  echo "== SmolLM2 on cuda, 1 slot"
  serve_and_load cuda-p1 --device cuda --parallel 1 --queue 128
  echo "== SmolLM2 on the host CPU (16 cores), 8 slots of 2 threads"
  LEVELS=1,8,16 REQS=16 serve_and_load cpu-p8 --parallel 8 --threads 2 --queue 128
  exit 0
fi
echo "unknown phase $phase"; exit 2
