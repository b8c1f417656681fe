// What one row (a token of some sequence) of a batch sees of one layer's GPU cache: device
// pointers into that sequence's buffers, its position, and how many compressed entries it may
// attend to. Built on the host per forward call and uploaded once, so a batch may mix sequences
// and the kernels never ask the host anything.
#pragma once

#include <cstdint>

namespace agentrt::engine::cuda {

struct LayerRow {
  float* kv = nullptr;            // [capacity][head_dim]: normed + rotated, key and value
  float* comp_kv = nullptr;       // compressor raw projections [capacity][coff * head_dim]
  float* comp_gate = nullptr;     // same shape
  float* comp_entries = nullptr;  // [capacity / rate][head_dim]
  float* idx_kv = nullptr;        // indexer raw projections [capacity][2 * index_head_dim]
  float* idx_gate = nullptr;
  float* idx_entries = nullptr;  // [capacity / rate][index_head_dim]
  int64_t pos = 0;
  int32_t visible = 0;  // complete compressed windows at this position: (pos + 1) / rate
};

// One compressed entry to emit: entry w of the cache whose raw rows and entries these are.
struct CompressJob {
  const float* raw_kv;
  const float* raw_gate;
  float* entries;
  int64_t w;
};

// Which LayerRow buffer a row-append writes.
enum class CacheField { kv, comp_kv, comp_gate, idx_kv, idx_gate };

}  // namespace agentrt::engine::cuda
