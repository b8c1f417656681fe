// Float32 matrices to the two quantised layouts of real DeepSeek-V4 checkpoints, for the model
// maker and tests: FP8 e4m3 with one power-of-two (ue8m0) scale per 128x128 block, and MXFP4
// (E2M1, two per byte, low nibble first) with one ue8m0 scale per 32 columns of a row. Scales are
// the smallest power of two that keeps the block's largest magnitude representable; values round
// to the nearest representable number.
#pragma once

#include <cstdint>
#include <vector>

namespace agentrt::engine {

struct QuantizedMatrix {
  std::vector<uint8_t> data;    // FP8: [rows][cols]; FP4: [rows][cols / 2]
  std::vector<uint8_t> scales;  // ue8m0: FP8 [ceil(rows/128)][ceil(cols/128)]; FP4 [rows][cols/32]
};

QuantizedMatrix quantize_fp8_blocks(const float* values, int64_t rows, int64_t cols);

// cols must be a multiple of 32 (throws otherwise).
QuantizedMatrix quantize_mxfp4(const float* values, int64_t rows, int64_t cols);

// Nearest e4m3 code (saturating at +-448) and nearest E2M1 code (saturating at +-6).
uint8_t float_to_e4m3(float value);
uint8_t float_to_e2m1(float value);

}  // namespace agentrt::engine
