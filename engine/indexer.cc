#include "engine/indexer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/matmul.h"

namespace agentrt::engine {

void indexer_scores(const float* q, const float* head_weights, int64_t heads, int64_t head_dim,
                    const RowStore& keys, int64_t visible, float* scores) {
  const float scale = 1.0f / std::sqrt(float(head_dim));
  for (int64_t s = 0; s < visible; ++s) {
    const float* k = keys.row(s);
    float acc = 0;
    for (int64_t h = 0; h < heads; ++h) {
      const float dot = dot_f32(q + h * head_dim, k, head_dim);
      acc += head_weights[h] * (std::max(dot, 0.0f) * scale);
    }
    scores[s] = acc;
  }
}

void indexer_select(const float* q, const float* head_weights, int64_t heads, int64_t head_dim,
                    const RowStore& keys, int64_t visible, int64_t topk,
                    std::vector<int64_t>& chosen) {
  chosen.clear();
  if (visible <= topk) {
    for (int64_t s = 0; s < visible; ++s) chosen.push_back(s);
    return;
  }
  std::vector<float> scores(visible);
  indexer_scores(q, head_weights, heads, head_dim, keys, visible, scores.data());
  std::vector<int64_t> order(visible);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + topk, order.end(), [&](int64_t a, int64_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  });
  chosen.assign(order.begin(), order.begin() + topk);
  std::sort(chosen.begin(), chosen.end());
}

}  // namespace agentrt::engine
