// How GemmPrecision::fp8 quantises activations for cuBLASLt's block-scaled FP8 GEMMs
// (fp8_gemm.cu), as host-callable functions so a test without a GPU (CudaFp8ActQuant.*) and the
// GPU tests' host reference compute exactly what the kernel does.
//
// DeepSeek's own inference multiplies FP8 weights this way: each activation row is quantised to
// e4m3 per block of 128 columns, with one float32 scale per block (cuBLASLt's VEC128_32F), and
// the weights keep their e4m3 values and 128 x 128 block scales (BLK128x128_32F). The scale here
// is the smallest power of two that keeps the block's largest magnitude within e4m3's 448 (as the
// ue8m0 scales of V4's checkpoints), so dividing by it is exact and only e4m3's rounding loses.
//
// Scale layouts (cuBLAS documentation, "Scaling factors layouts" for VEC128_32F and
// BLK128x128_32F; PyTorch's torch._scaled_mm passes the same): the activations' scales are
// N-major, [column block][row], rows contiguous, the GEMM's row count a multiple of 4
// (whole_rows); the weights' are K-major, [row block][column block] (the checkpoint's order),
// each row of column blocks padded to a multiple of 4 (16 bytes). Scale pointers 16-byte aligned.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/float_bits.h"

namespace agentrt::engine::cuda::fp8_act_quant {

constexpr int64_t kBlock = 128;     // columns (and weight rows) per scale
constexpr float kE4m3Max = 448.0f;  // the largest finite e4m3 magnitude

// The exponent e of the smallest power of two with amax / 2^e <= 448, clamped to [-126, 127],
// from amax's bits (amax >= 0): amax = m 2^(b - 127), m in [1, 2), so amax / 448 = (m / 1.75)
// 2^(b - 135), and m / 1.75 is in (1/2, 1] exactly when m <= 1.75 (mantissa bits <= 0x600000).
// kNotFinite where amax is infinite (or NaN): the block's scale is then NaN, so its products are
// NaN rather than silently saturated to +-448. The largest magnitude is taken with fmax from 0,
// which drops NaNs: a NaN value keeps its own NaN code, and so its products are NaN too.
constexpr int kNotFinite = 1000;
__host__ __device__ inline int scale_exponent(uint32_t amax_bits) {
  const int biased = int((amax_bits >> 23) & 0xff);
  if (biased == 0xff) return kNotFinite;
  if (biased == 0) return -126;  // zero or subnormal: every value stays below 448 * 2^-126
  const int e = biased - 135 + ((amax_bits & 0x7fffff) > 0x600000 ? 1 : 0);
  return e < -126 ? -126 : (e > 127 ? 127 : e);
}

// 2^e for -126 <= e <= 127, exactly; NaN for kNotFinite.
__host__ __device__ inline float exp2_exact(int e) {
  return e == kNotFinite ? bits_float(0x7fc00000u) : power_of_two(e);
}

// Index of the scale of row m's column block kb among `rows` (a multiple of 4) GEMM rows.
__host__ __device__ inline int64_t act_scale_index(int64_t m, int64_t kb, int64_t rows) {
  return kb * rows + m;
}

// Column blocks of a weight row of `cols`, and the padded count each scale row takes.
__host__ __device__ inline int64_t column_blocks(int64_t cols) {
  return (cols + kBlock - 1) / kBlock;
}
__host__ __device__ inline int64_t weight_scale_ld(int64_t cols) {
  return (column_blocks(cols) + 3) / 4 * 4;
}

// GEMM rows for n activation rows: cuBLASLt takes a multiple of 4 (the scales' rows are 16-byte
// aligned); the GEMMs take multiples of kTailRows, and the last n % kTailRows rows go through a
// GEMM of their own, padded to kTailRows with zeros (16: a width cuBLASLt's FP8 kernels surely
// have tiles for; the padding costs one more read of the weights, small beside a prefill's).
constexpr int64_t kTailRows = 16;
__host__ __device__ inline int64_t whole_rows(int64_t n) { return n / kTailRows * kTailRows; }

// Where a kernel other than Fp8Gemm's quantiser writes activation rows for an Fp8Gemm product
// (Fp8Gemm::room; the prefill attention's epilogue writes wo_a's input this way): row m of `cols`
// e4m3 codes at row(m) and its column block kb's scale at *scale(m, kb), in Fp8Gemm::stage's
// layout: the first `whole` rows in one GEMM's operand, the rest in the tail's (kTailRows rows,
// zero-padded).
struct RowsOut {
  uint8_t* q = nullptr;
  float* scales = nullptr;
  int64_t whole = 0;
  uint8_t* tail_q = nullptr;
  float* tail_scales = nullptr;
  int64_t cols = 0;
  __host__ __device__ uint8_t* row(int64_t m) const {
    return m < whole ? q + m * cols : tail_q + (m - whole) * cols;
  }
  __host__ __device__ float* scale(int64_t m, int64_t kb) const {
    return m < whole ? scales + act_scale_index(m, kb, whole)
                     : tail_scales + act_scale_index(m - whole, kb, kTailRows);
  }
};

}  // namespace agentrt::engine::cuda::fp8_act_quant
