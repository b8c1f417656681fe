// MXFP4 weight rows (WeightType::f4_e2m1): the routed experts of real DeepSeek-V4 checkpoints.
// Each byte holds two E2M1 values (low nibble = even column); each run of 32 columns of a row
// shares one ue8m0 scale (2^(e - 127)). These are the kernels matmul.cc dispatches to; the
// scalar decode_fp4_row_reference is the plain definition they are tested against.
#pragma once

#include <cstdint>

#include "engine/matmul.h"

namespace agentrt::engine {

inline constexpr int64_t kFp4Group = 32;

// The 16 E2M1 values: sign bit 3, exponent bits 2-1 (bias 1), mantissa bit 0.
inline constexpr float kE2m1Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                          -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// The scale of one 32-column group of a row (NaN for the ue8m0 NaN code 255).
float fp4_group_scale(const WeightMatrix& w, int64_t row, int64_t group);

void decode_fp4_row(const WeightMatrix& w, int64_t row, float* out);
void decode_fp4_row_reference(const WeightMatrix& w, int64_t row, float* out);

float dot_fp4(const WeightMatrix& w, int64_t row, const float* x);

// out[t] = dot(w row, x + t * cols) for t < nt <= 4, decoding each group once for all tokens.
void dot_multi_fp4(const WeightMatrix& w, int64_t row, const float* x, int64_t nt, float* out);

}  // namespace agentrt::engine
