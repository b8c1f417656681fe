// One sequence's caches on the GPU (the twin of engine/kv_cache.h): per layer the sliding K=V
// rows, the compressor's and indexer's raw projections per position and their compressed
// entries, in buffers that grow (doubling) with the sequence. As on the CPU, every derived entry
// depends only on raw rows before it, so truncate() is a change of length: rows past it are
// overwritten when the sequence continues.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/cuda/device_buffer.h"
#include "engine/forward_config.h"

namespace agentrt::engine::cuda {

struct DeviceLayerCache {
  DeviceBuffer kv, comp_kv, comp_gate, comp_entries, idx_kv, idx_gate, idx_entries;
};

class DeviceSequenceCache {
 public:
  explicit DeviceSequenceCache(const ForwardConfig& config)
      : config_(&config), layers_(config.layers.size()) {}

  int64_t length = 0;

  // Makes room for `positions` positions, keeping the first `length`.
  void reserve(int64_t positions, cudaStream_t stream) {
    if (positions <= capacity_) return;
    const int64_t cap = std::max({positions, 2 * capacity_, int64_t(256)});
    const ForwardConfig& c = *config_;
    for (size_t l = 0; l < layers_.size(); ++l) {
      const ForwardLayer& fl = c.layers[l];
      DeviceLayerCache& lc = layers_[l];
      grow(lc.kv, c.head_dim, cap, length, stream);
      if (fl.attention != AttentionKind::sliding) {
        const int64_t coff = fl.attention == AttentionKind::csa ? 2 : 1;
        grow(lc.comp_kv, coff * c.head_dim, cap, length, stream);
        grow(lc.comp_gate, coff * c.head_dim, cap, length, stream);
        grow(lc.comp_entries, c.head_dim, cap / fl.compress_rate + 1, length / fl.compress_rate,
             stream);
      }
      if (fl.attention == AttentionKind::csa) {
        grow(lc.idx_kv, 2 * c.index_head_dim, cap, length, stream);
        grow(lc.idx_gate, 2 * c.index_head_dim, cap, length, stream);
        grow(lc.idx_entries, c.index_head_dim, cap / fl.compress_rate + 1,
             length / fl.compress_rate, stream);
      }
    }
    capacity_ = cap;
  }

  DeviceLayerCache& layer(size_t l) { return layers_[l]; }
  int64_t capacity() const { return capacity_; }
  int64_t device_bytes() const {
    int64_t b = 0;
    for (const auto& l : layers_)
      b += l.kv.bytes() + l.comp_kv.bytes() + l.comp_gate.bytes() + l.comp_entries.bytes() +
           l.idx_kv.bytes() + l.idx_gate.bytes() + l.idx_entries.bytes();
    return b;
  }

 private:
  static void grow(DeviceBuffer& b, int64_t width, int64_t rows, int64_t keep_rows,
                   cudaStream_t stream) {
    b.reserve(rows * width * 4, keep_rows * width * 4, stream);
  }
  const ForwardConfig* config_;
  std::vector<DeviceLayerCache> layers_;
  int64_t capacity_ = 0;
};

}  // namespace agentrt::engine::cuda
