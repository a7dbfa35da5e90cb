# Shared by the device scripts (gpu_checks.sh, kv_checks.sh): the build on the GPU host.
# Expects BIN and OUT set.
build() {
  local t0
  t0=$(date +%s)
  if ! { cmake -S . -B $BIN -DCMAKE_BUILD_TYPE=Release -DSDTP_NATIVE=OFF >"$OUT/configure.log" 2>&1 &&
    cmake --build $BIN -j16 --target sdtp sdtp_tests sdtp_cuda_tests >"$OUT/build.log" 2>&1; }; then
    tail -n 40 "$OUT/configure.log" "$OUT/build.log"
    echo "device build failed"
    exit 1
  fi
  echo "built in $(($(date +%s) - t0)) s"
}
