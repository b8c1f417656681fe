// The shared expert's SwiGLU under GemmPrecision::fp8 prefill (CudaOptions::shared_fp8_rows):
// the gate and up products' rows in, the down product's e4m3 activation rows out, in one pass.
// swiglu() wrote float32 rows that the down product's quantiser read back (2 x 134 MB a layer at
// 16K rows); this writes the codes and scales that quantiser would write from them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/fp8_act_quant.h"

namespace agentrt::engine::cuda {

// rows' n rows of width values: swiglu(gate, up) with the clamps of `limit` (0: none), quantised
// per row and 128 columns (fp8_act_quant.h) into `rows` (LinearRunner::fp8_rows_room). gate and
// up: [n][width] float32 or bf16 (the products' bf16 output, Product::bf16_out); width a multiple
// of 128. From float32 rows the bytes are those swiglu() then Fp8Gemm's quantiser write.
void swiglu_quantize_rows(const float* gate, const float* up, int64_t n, int64_t width, float limit,
                          const fp8_act_quant::RowsOut& rows, cudaStream_t stream);
void swiglu_quantize_rows(const __nv_bfloat16* gate, const __nv_bfloat16* up, int64_t n,
                          int64_t width, float limit, const fp8_act_quant::RowsOut& rows,
                          cudaStream_t stream);

}  // namespace agentrt::engine::cuda
