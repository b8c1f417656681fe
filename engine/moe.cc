#include "engine/moe.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/matmul.h"

namespace agentrt::engine {
namespace {

float score(ScoreFunc f, float x) {
  switch (f) {
    case ScoreFunc::sqrtsoftplus:
      // torch softplus: x for x > 20, else log1p(exp(x)).
      return std::sqrt(x > 20.0f ? x : std::log1p(std::exp(x)));
    case ScoreFunc::sigmoid:
      return 1.0f / (1.0f + std::exp(-x));
    case ScoreFunc::softmax:
      return x;  // normalised over the row below
  }
  return x;
}

}  // namespace

Routing route(const ForwardConfig& c, const ForwardLayer& layer, const MoeWeights& w,
              const float* h, std::span<const int32_t> tokens, const Parallel& par) {
  const int64_t n = int64_t(tokens.size()), E = c.experts, k = c.experts_per_token;
  std::vector<float> logits(n * E);
  matmul(h, n, w.gate, logits.data(), par);
  Routing r;
  r.experts.resize(n * k);
  r.weights.resize(n * k);
  std::vector<float> scores(E), biased(E);
  std::vector<int32_t> order(E);
  for (int64_t t = 0; t < n; ++t) {
    const float* lg = logits.data() + t * E;
    for (int64_t e = 0; e < E; ++e) scores[e] = score(c.score_func, lg[e]);
    if (c.score_func == ScoreFunc::softmax) {
      const float mx = *std::max_element(scores.begin(), scores.end());
      float s = 0;
      for (auto& v : scores) s += (v = std::exp(v - mx));
      for (auto& v : scores) v /= s;
    }
    int32_t* chosen = r.experts.data() + t * k;
    if (layer.router == RouterKind::hash) {
      std::copy_n(w.tid2eid.data() + int64_t(tokens[t]) * k, k, chosen);
    } else {
      for (int64_t e = 0; e < E; ++e) biased[e] = scores[e] + w.bias[e];
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        return biased[a] != biased[b] ? biased[a] > biased[b] : a < b;
      });
      std::copy_n(order.begin(), k, chosen);
    }
    float sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += scores[chosen[i]];
    for (int64_t i = 0; i < k; ++i)
      r.weights[t * k + i] = scores[chosen[i]] / (sum + 1e-20f) * c.routed_scaling;
  }
  return r;
}

void swiglu_expert(const ExpertWeights& e, float limit, const float* x, int64_t n, float* out,
                   const Parallel& par) {
  const int64_t inter = e.w1.rows;
  std::vector<float> gate(n * inter), up(n * inter);
  matmul(x, n, e.w1, gate.data(), par);
  matmul(x, n, e.w3, up.data(), par);
  for (int64_t i = 0; i < n * inter; ++i) {
    float g = gate[i], u = up[i];
    if (limit > 0) {
      g = std::min(g, limit);
      u = std::clamp(u, -limit, limit);
    }
    gate[i] = g / (1.0f + std::exp(-g)) * u;
  }
  matmul(gate.data(), n, e.w2, out, par);
}

void moe_forward(const ForwardConfig& c, const ForwardLayer& layer, const MoeWeights& w,
                 const float* h, std::span<const int32_t> tokens, float* out, const Parallel& par) {
  const int64_t n = int64_t(tokens.size()), H = c.hidden, k = c.experts_per_token;
  if (layer.router == RouterKind::hash)
    for (int32_t t : tokens)
      if (t < 0 || t >= c.vocab_size)
        throw std::out_of_range("moe: token id " + std::to_string(t) + " outside the vocabulary");
  const Routing r = route(c, layer, w, h, tokens, par);
  swiglu_expert(w.shared, c.swiglu_limit, h, n, out, par);
  // Group the rows by expert so each expert's weights are read once per batch.
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(c.experts);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < k; ++i)
      by_expert[r.experts[t * k + i]].push_back({t, r.weights[t * k + i]});
  std::vector<float> xin, yout;
  for (int64_t e = 0; e < c.experts; ++e) {
    const auto& list = by_expert[e];
    if (list.empty()) continue;
    const int64_t m = int64_t(list.size());
    xin.resize(m * H);
    yout.resize(m * H);
    for (int64_t i = 0; i < m; ++i) std::copy_n(h + list[i].first * H, H, xin.data() + i * H);
    swiglu_expert(w.experts[e], c.swiglu_limit, xin.data(), m, yout.data(), par);
    for (int64_t i = 0; i < m; ++i) {
      float* dst = out + list[i].first * H;
      const float wt = list[i].second;
      for (int64_t d = 0; d < H; ++d) dst[d] += wt * yout[i * H + d];
    }
  }
}

}  // namespace agentrt::engine
