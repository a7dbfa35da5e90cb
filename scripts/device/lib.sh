# Shared by the device scripts (gpu_checks.sh, kv_checks.sh): where things go on the GPU host, and
# the build there. Logs and results go to $OUT (the device tool's folder when it sets one).
OUT=${OUT:-/tmp/sdtp-gpu-out}
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
BIN=build-gpu
MODEL=/tmp/sdtp-model/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PREDICTOR=predictors/SmolLM2-135M-Instruct.sdtp.safetensors

# The model's first half (carried in .dev/m1) kept outside the repository, which the next call
# lays anew; join_model below adds the second.
keep_half1() {
  mkdir -p /tmp/sdtp-model && cp .dev/m1/part-aa /tmp/sdtp-model/ && echo "model half 1 kept in /tmp/sdtp-model"
}

build() {
  local t0
  t0=$(date +%s)
  # The server needs cpp-httplib: the GPU host has no package, so a header-only httplib.h carried in
  # .dev/m1/httplib is kept in /tmp/sdtp-httplib and used when present.
  local extra=()
  if [[ -f .dev/m1/httplib/httplib.h ]]; then mkdir -p /tmp/sdtp-httplib && cp .dev/m1/httplib/httplib.h /tmp/sdtp-httplib/; fi
  [[ -f /tmp/sdtp-httplib/httplib.h ]] && extra=(-DSDTP_HTTPLIB_HEADER_DIR=/tmp/sdtp-httplib)
  if ! { cmake -S . -B $BIN -DCMAKE_BUILD_TYPE=Release -DSDTP_NATIVE=OFF "${extra[@]}" >"$OUT/configure.log" 2>&1 &&
    cmake --build $BIN -j16 --target sdtp sdtp_tests sdtp_cuda_tests >"$OUT/build.log" 2>&1; }; then
    tail -n 40 "$OUT/configure.log" "$OUT/build.log"
    echo "device build failed"
    exit 1
  fi
  echo "built in $(($(date +%s) - t0)) s"
}

# The default model from its halves (the first kept in /tmp/sdtp-model by an earlier call, the
# second carried in .dev/m2), checked; the eval haystack (Debian fortunes) from .dev/m2; the
# build when this machine has none.
join_model() {
  cat /tmp/sdtp-model/part-aa .dev/m2/part-ab >"$MODEL"
  echo "$SHA  $MODEL" | sha256sum -c - || exit 1
  [[ -x $BIN/sdtp ]] || build
  mkdir -p /usr/share/games/fortunes && cp .dev/m2/fortunes/* /usr/share/games/fortunes/
}
