// The prefill attention on Hopper's warpgroup MMA (attention_wgmma.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/fp8_act_quant.h"
#include "engine/cuda/kernels.h"

namespace agentrt::engine::cuda {

// attend_rows_mma_mirrored's plain bf16 products (split false) on Hopper's warpgroup MMA, for
// heads of 512 (a multiple of 64 heads): one block a row's 64 heads on two warpgroups, 64-key
// tiles of the bf16 mirror, the scores split by keys and the output by channels between the
// warpgroups. The same roundings (query, keys, P to bf16; float32 softmax and sums) in another
// order. Runs only where wgmma_kernels_run (wgmma_runs.h). out8 set: the outputs as e4m3 rows
// with block scales there (Fp8Gemm::room's layout; the values quantize_rows_e4m3 writes for the
// float32 outputs) instead of float32 at out (CudaOptions::attention_fp8_out: wo_a's input).
// q_bf16 set: the query rows as bf16 there instead of float32 at q (CudaOptions::query_bf16).
// lean: the same values with fewer instructions a tile, and the L2 asked for the query of the row
// query_ahead rows on (CudaOptions::attention_lean, attention_query_ahead; the kernel's comment).
bool attend_rows_wgmma_supported(int64_t heads, int64_t head_dim);
void attend_rows_wgmma(const float* q, const LayerRow* rows, int64_t n, int64_t heads,
                       int64_t head_dim, int64_t window, const float* sinks, bool use_entries,
                       const int32_t* chosen, const int32_t* n_chosen, int64_t topk,
                       const float* kv, int64_t kv_first, int64_t kv_rows, const float* entries,
                       int64_t n_entries, void* mirror, float* out, cudaStream_t stream,
                       const QueryNormRope& norm = {}, const fp8_act_quant::RowsOut* out8 = nullptr,
                       const __nv_bfloat16* q_bf16 = nullptr, bool lean = false,
                       int query_ahead = 0);

}  // namespace agentrt::engine::cuda
