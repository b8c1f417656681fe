// Writes a .safetensors file: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets}}, then the raw tensor bytes. Used by the model maker
// (model_init.h) and by tests that need small checkpoints.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace agentrt::engine {

struct TensorToWrite {
  std::string name;
  std::string dtype;  // safetensors spelling: "F32", "BF16", "F16", "I64", "I32", "F8_E4M3", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

// Throws naming the file if it cannot be written or a tensor's byte size mismatches its shape.
void write_safetensors(const std::filesystem::path& file,
                       const std::vector<TensorToWrite>& tensors);

// float32 -> bfloat16 with round-to-nearest-even.
uint16_t float_to_bf16(float value);

}  // namespace agentrt::engine
