B=build-gpu
export PATH=/usr/local/cuda/bin:$PATH; [ -d $B ] || cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DSDTP_NATIVE=OFF > /tmp/c.log 2>&1; cmake --build $B -j16 --target sdtp > /tmp/b.log 2>&1 || { tail -20 /tmp/b.log; exit 1; }
SDTP_KV_PROFILE=1 timeout 120 $B/sdtp bench --device cuda --random-weights llama2-7b -p 8192 -n 16 -r 1 --kv-policy vatp --kv-budget 0.25 --kv-interval 1 2>&1 | grep -E "kv-profile|\| kv|\| dense"
SDTP_KV_PROFILE=1 timeout 120 $B/sdtp bench --device cuda --random-weights llama2-7b -p 8192 -n 16 -r 1 --kv-policy h2o --kv-budget 0.25 --kv-interval 1 2>&1 | grep -E "kv-profile|\| kv"
SDTP_CUDA_PROFILE=1 timeout 120 $B/sdtp bench --device cuda --random-weights llama2-7b -p 8192 -n 2 -r 1 --kv-policy vatp --kv-budget 0.25 --kv-interval 1 > $OUT/cuda_prof.log 2>&1
grep -c . $OUT/cuda_prof.log
