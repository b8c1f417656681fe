// y = x W^T for a weight matrix stored row-major [rows][cols] in float32, bfloat16, float16,
// FP8 e4m3 with one scale per 128x128 block (DeepSeek's layout; scales float32 or ue8m0), or
// FP4 e2m1 with one ue8m0 scale per 32 columns of a row (MXFP4, the routed experts of V4).
// The fast kernel converts weights to float32 inside the inner loop (never expanding the matrix in
// memory) and spreads output rows over the Parallel; matmul_reference is the plain loop it is
// tested against.
#pragma once

#include <cstdint>

#include "engine/parallel.h"

namespace agentrt::engine {

enum class WeightType { f32, bf16, f16, f8_e4m3, f4_e2m1 };
enum class ScaleType { f32, e8m0 };

struct WeightMatrix {
  WeightType type = WeightType::f32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  // FP8: scales [ceil(total_rows / 128)][ceil(cols / 128)]. FP4: data holds two values per byte
  // (low nibble = even column), [rows][cols / 2], and scales are ue8m0 [total_rows][cols / 32].
  // row_offset locates a row slice within the full matrix's scale grid.
  const void* scale = nullptr;
  ScaleType scale_type = ScaleType::f32;
  int64_t row_offset = 0;

  // A view of rows [begin, begin + count).
  WeightMatrix slice_rows(int64_t begin, int64_t count) const;
  // Bytes of one stored row and of the whole matrix (scales not counted).
  int64_t row_bytes() const;
  int64_t bytes() const;
};

// Converts one weight row to float32.
void decode_weight_row(const WeightMatrix& w, int64_t row, float* out);

// dot(w[row], x) with the conversion fused into the loop.
float dot_weight_row(const WeightMatrix& w, int64_t row, const float* x);

// y[t][r] = sum_c x[t][c] * w[r][c] for t < n; x is [n][cols], y is [n][rows].
void matmul(const float* x, int64_t n, const WeightMatrix& w, float* y, const Parallel& par);

void matmul_reference(const float* x, int64_t n, const WeightMatrix& w, float* y);

// Plain float32 dot product (vectorised).
float dot_f32(const float* a, const float* b, int64_t n);

}  // namespace agentrt::engine
