// Per-sequence caches of the CPU forward pass, one LayerCache per layer.
//
// Rewinding (truncate) must leave the state exactly as if the dropped tokens had never been fed.
// Compressed entries depend on whole windows (a CSA entry on two), so instead of transformers'
// rolling buffer + overlap state we keep, per position, the raw compressor projections (kv and
// gate, before softmax pooling) next to the sliding-window K=V rows, and derive everything else:
// the "buffer" is the raw rows past the last full window, the "overlap" is the previous window's
// raw rows. Truncating to k is then a resize: positions >= k go, and compressed entries whose
// window is not complete within k go (entry w needs positions < (w + 1) * rate).
// Cost: per position and layer, head_dim floats (+ 2 or 4 x the compressor width for CSA/HCA);
// the price of exact rewind to any length.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace agentrt::engine {

// Rows of a fixed width, appended and truncated together.
struct RowStore {
  int64_t width = 0;
  std::vector<float> data;

  int64_t rows() const { return width ? int64_t(data.size()) / width : 0; }
  const float* row(int64_t i) const { return data.data() + i * width; }
  float* row(int64_t i) { return data.data() + i * width; }
  float* append(int64_t n = 1) {
    data.resize(data.size() + n * width);
    return data.data() + data.size() - n * width;
  }
  void truncate(int64_t n) { data.resize(std::min<int64_t>(n, rows()) * width); }
};

struct CompressorCache {
  int64_t rate = 0;
  RowStore raw_kv;    // [position][coff * dim]
  RowStore raw_gate;  // [position][coff * dim]
  RowStore entries;   // [entry][dim], normalised and rotated

  void truncate(int64_t length) {
    raw_kv.truncate(length);
    raw_gate.truncate(length);
    entries.truncate(length / rate);
  }
};

struct LayerCache {
  RowStore kv;                 // [position][head_dim]: normed + rotated, read as both key and value
  CompressorCache compressor;  // CSA / HCA layers
  CompressorCache indexer;     // CSA layers

  void truncate(int64_t length) {
    kv.truncate(length);
    if (compressor.rate) compressor.truncate(length);
    if (indexer.rate) indexer.truncate(length);
  }
};

struct SequenceCache {
  int64_t length = 0;
  std::vector<LayerCache> layers;

  void truncate(int64_t new_length) {
    for (auto& l : layers) l.truncate(new_length);
    length = new_length;
  }
};

}  // namespace agentrt::engine
