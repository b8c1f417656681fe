// swiglu_rows.h: one warp a 128-column block of a row, 4 values a lane, each value as
// swiglu_weighted (weight 1: swiglu()'s value exactly) and the block as quantize_block_e4m3 (the
// quantiser Fp8Gemm's own staging uses).
#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/float_bits.h"
#include "engine/cuda/fp8_quant_warp.cuh"
#include "engine/cuda/launch.cuh"
#include "engine/cuda/swiglu.h"
#include "engine/cuda/swiglu_rows.h"

namespace agentrt::engine::cuda {
namespace {

namespace aq = fp8_act_quant;

// A lane's 4 consecutive values at `at`, widened.
__device__ __forceinline__ float4 load4(const float* at) {
  return __ldg(reinterpret_cast<const float4*>(at));
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* at) {
  return bf16x4_as_float4(__ldg(reinterpret_cast<const uint2*>(at)));
}

template <typename T>
__global__ void swiglu_quantize_rows_kernel(const T* gate, const T* up, int64_t n, int64_t width,
                                            float limit, aq::RowsOut rows) {
  pdl_begin();
  const int lane = int(threadIdx.x % 32);
  const int64_t blocks = width / aq::kBlock, warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t item = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; item < n * blocks;
       item += warps) {
    const int64_t m = item / blocks, kb = item % blocks;
    const int64_t at = m * width + kb * aq::kBlock + 4 * lane;
    const float4 g = load4(gate + at), u = load4(up + at);
    const float4 v =
        make_float4(swiglu_weighted(g.x, u.x, limit, 1.0f), swiglu_weighted(g.y, u.y, limit, 1.0f),
                    swiglu_weighted(g.z, u.z, limit, 1.0f), swiglu_weighted(g.w, u.w, limit, 1.0f));
    float scale;
    const uint32_t codes = quantize_block_e4m3(v, &scale);
    *reinterpret_cast<uint32_t*>(rows.row(m) + kb * aq::kBlock + 4 * lane) = codes;
    if (lane == 0) *rows.scale(m, kb) = scale;
  }
}

template <typename T>
void launch(const T* gate, const T* up, int64_t n, int64_t width, float limit,
            const aq::RowsOut& rows, cudaStream_t stream) {
  if (width % aq::kBlock != 0 || rows.cols != width)
    throw std::invalid_argument("swiglu_quantize_rows: width " + std::to_string(width) +
                                " must be a multiple of 128 and the rows' width (" +
                                std::to_string(rows.cols) + ")");
  if (n <= 0) return;
  const int64_t warps = n * (width / aq::kBlock);
  launch_pdl(swiglu_quantize_rows_kernel<T>, unsigned(std::min<int64_t>((warps + 7) / 8, 65536)),
             256, 0, stream, gate, up, n, width, limit, rows);
  AGENTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void swiglu_quantize_rows(const float* gate, const float* up, int64_t n, int64_t width, float limit,
                          const fp8_act_quant::RowsOut& rows, cudaStream_t stream) {
  launch(gate, up, n, width, limit, rows, stream);
}

void swiglu_quantize_rows(const __nv_bfloat16* gate, const __nv_bfloat16* up, int64_t n,
                          int64_t width, float limit, const fp8_act_quant::RowsOut& rows,
                          cudaStream_t stream) {
  launch(gate, up, n, width, limit, rows, stream);
}

}  // namespace agentrt::engine::cuda
