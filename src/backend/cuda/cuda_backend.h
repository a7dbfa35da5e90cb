// The CUDA backend (backend.h) on the kernels of ops.h / model_ops.h: bf16 activations, weights
// and KV cache, float32 accumulation, every op queued on one stream per device.
//
// Decode steps run as CUDA graphs (run_step): queue() is first called in a "collect" pass in which
// every op, instead of launching, records its launch shape (op, pointers, sizes, scalars, the
// kernel it picks, the split count of the decode attention); a step whose record equals that of a
// graph already instantiated replays it (cudaGraphLaunch), any other is captured (relaxed stream
// capture) and instantiated, or updated in place (cudaGraphExecUpdate) when the few graphs kept
// are all in use. So a replayed step is valid for exactly the host values it was recorded with;
// the values that change from step to step reach the kernels through device memory: the contents
// of device tensors (token ids, positions) and every cache's per-head lengths (KVView::len: where
// qkv_rope_append writes, how far attention, entry_norms and gather_entries read). The host counts
// (KVView::n) only check shapes and set the decode attention's split count, which is in the key.
// A step that allocates, uploads, downloads or synchronizes inside queue() is not
// captured: it runs op by op. Graphs are off under SDTP_CUDA_GRAPHS=0, SDTP_CUDA_PROFILE and
// SDTP_CUDA_SYNC.
//
// Environment: SDTP_CUDA_PROFILE=1 prints the device time per op to stderr after each
// synchronize, download and step; SDTP_CUDA_SYNC=1 checks every op as it runs; SDTP_CUDA_ATTN_VARIANT
// picks the attention kernel for measurements (1-4: the mma.sync flash kernel's shapes for every
// row count, 10-13: the wgmma kernel's variants).
#pragma once

#include <memory>

#include "backend/backend.h"

namespace sdtp::cuda {

// Number of usable CUDA devices; 0 when there is no device or no driver (never throws).
int cuda_device_count();
// Throws UsageError ("--device cuda:1: only 1 CUDA device(s) found" / "--device cuda: no CUDA
// device found (no GPU or no driver)").
std::shared_ptr<Backend> make_cuda_backend(int device);

}  // namespace sdtp::cuda
