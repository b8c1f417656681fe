// The keys one query row attends to (every attention kernel's view of a LayerRow): the sliding
// window of the KV rows up to the row's position, then the compressed entries, either the
// indexer's chosen ones (CSA) or all the row sees (HCA). Keys are also the values (shared-KV MQA).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/layer_rows.h"

namespace agentrt::engine::cuda {

struct KeyList {
  const float* kv;
  const float* entries;
  const int32_t* chosen;  // this row's chosen entries, or null: entries 0 .. n_entries
  int64_t first;          // first window position
  int64_t n_window;       // window keys
  int64_t n_entries;      // compressed keys
  __host__ __device__ int64_t n_keys() const { return n_window + n_entries; }
  // Key i's head_dim floats.
  __host__ __device__ const float* key(int64_t i, int64_t hd) const {
    if (i < n_window) return kv + (first + i) * hd;
    const int64_t e = i - n_window;
    return entries + (chosen ? int64_t(chosen[e]) : e) * hd;
  }
};

// Row t's keys: chosen (with n_chosen, topk per row) for CSA; else all visible entries when
// use_entries (HCA), none otherwise.
__host__ __device__ __forceinline__ KeyList row_keys(const LayerRow& row, int64_t t, int64_t window,
                                                     bool use_entries, const int32_t* chosen,
                                                     const int32_t* n_chosen, int64_t topk) {
  KeyList keys;
  keys.kv = row.kv;
  keys.entries = row.comp_entries;
  keys.first = row.pos - window + 1 > 0 ? row.pos - window + 1 : 0;
  keys.n_window = row.pos - keys.first + 1;
  keys.chosen = chosen ? chosen + t * topk : nullptr;
  keys.n_entries = chosen ? n_chosen[t] : use_entries ? row.visible : 0;
  return keys;
}

}  // namespace agentrt::engine::cuda
