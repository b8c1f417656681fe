#include "engine/compressor.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/rmsnorm.h"

namespace agentrt::engine {

void compress_entry(const CompressorWeights& weights, const CompressorCache& cache, int64_t w,
                    const RopeTable& rope, float rms_eps, float* out) {
  const int64_t dim = weights.dim, rate = weights.rate;
  const int64_t width = weights.overlap ? 2 * dim : dim;
  // Slots: (position, channel offset into the raw row and into ape).
  struct Slot {
    int64_t pos;
    int64_t offset;
    int64_t ape_row;
  };
  std::vector<Slot> slots;
  if (weights.overlap && w > 0)
    for (int64_t j = 0; j < rate; ++j) slots.push_back({(w - 1) * rate + j, 0, j});
  const int64_t own = weights.overlap ? dim : 0;
  for (int64_t j = 0; j < rate; ++j) slots.push_back({w * rate + j, own, j});

  std::vector<float> logits(slots.size());
  for (int64_t d = 0; d < dim; ++d) {
    float mx = -INFINITY;
    for (size_t s = 0; s < slots.size(); ++s) {
      const Slot& sl = slots[s];
      logits[s] = cache.raw_gate.row(sl.pos)[sl.offset + d] +
                  weights.ape[sl.ape_row * width + sl.offset + d];
      mx = std::max(mx, logits[s]);
    }
    float denom = 0, acc = 0;
    for (size_t s = 0; s < slots.size(); ++s) {
      const float e = std::exp(logits[s] - mx);
      denom += e;
      acc += e * cache.raw_kv.row(slots[s].pos)[slots[s].offset + d];
    }
    out[d] = acc / denom;
  }
  rms_norm(out, weights.norm.data(), dim, rms_eps, out);
  float cos[256], sin[256];
  rope.angles(w * rate, cos, sin);
  rope.apply(out, dim, cos, sin);
}

void compress_pending(const CompressorWeights& weights, CompressorCache& cache,
                      const RopeTable& rope, float rms_eps) {
  const int64_t complete = cache.raw_kv.rows() / cache.rate;
  for (int64_t w = cache.entries.rows(); w < complete; ++w)
    compress_entry(weights, cache, w, rope, rms_eps, cache.entries.append());
}

}  // namespace agentrt::engine
