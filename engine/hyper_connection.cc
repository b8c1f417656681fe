#include "engine/hyper_connection.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/matmul.h"
#include "engine/rmsnorm.h"

namespace agentrt::engine {
namespace {

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// mixes[i] = fn[i] . rms_norm(flat streams)
void project(const float* fn, int64_t outputs, const float* streams, int64_t width, float rms_eps,
             float* mixes) {
  std::vector<float> flat(width);
  rms_norm(streams, nullptr, width, rms_eps, flat.data());
  for (int64_t i = 0; i < outputs; ++i) mixes[i] = dot_f32(fn + i * width, flat.data(), width);
}

}  // namespace

void hyper_mix(const HyperWeights& w, const float* streams, int64_t hc, int64_t hidden,
               int sinkhorn_iters, float hc_eps, float rms_eps, HyperMix& out) {
  const int64_t n = (2 + hc) * hc;
  float mixes[(2 + kMaxHcMult) * kMaxHcMult];
  project(w.fn.data(), n, streams, hc * hidden, rms_eps, mixes);
  const float* base = w.base.data();
  for (int64_t i = 0; i < hc; ++i) {
    out.pre[i] = sigmoid(mixes[i] * w.scale[0] + base[i]) + hc_eps;
    out.post[i] = 2.0f * sigmoid(mixes[hc + i] * w.scale[1] + base[hc + i]);
  }
  float* comb = out.comb;
  for (int64_t i = 0; i < hc * hc; ++i) comb[i] = mixes[2 * hc + i] * w.scale[2] + base[2 * hc + i];
  hyper_sinkhorn(comb, hc, sinkhorn_iters, hc_eps);
}

void hyper_sinkhorn(float* comb, int64_t hc, int sinkhorn_iters, float hc_eps) {
  // Row softmax, then Sinkhorn: transformers starts with a column normalisation and alternates
  // row/column for the remaining iterations, each with + eps in the denominator.
  for (int64_t r = 0; r < hc; ++r) {
    float* row = comb + r * hc;
    float mx = -INFINITY;
    for (int64_t c = 0; c < hc; ++c) mx = std::max(mx, row[c]);
    float s = 0;
    for (int64_t c = 0; c < hc; ++c) s += (row[c] = std::exp(row[c] - mx));
    for (int64_t c = 0; c < hc; ++c) row[c] = row[c] / s + hc_eps;
  }
  auto normalise_columns = [&] {
    for (int64_t c = 0; c < hc; ++c) {
      float s = 0;
      for (int64_t r = 0; r < hc; ++r) s += comb[r * hc + c];
      for (int64_t r = 0; r < hc; ++r) comb[r * hc + c] /= s + hc_eps;
    }
  };
  auto normalise_rows = [&] {
    for (int64_t r = 0; r < hc; ++r) {
      float s = 0;
      for (int64_t c = 0; c < hc; ++c) s += comb[r * hc + c];
      for (int64_t c = 0; c < hc; ++c) comb[r * hc + c] /= s + hc_eps;
    }
  };
  normalise_columns();
  for (int it = 1; it < sinkhorn_iters; ++it) {
    normalise_rows();
    normalise_columns();
  }
}

void hyper_collapse(const float* pre, const float* streams, int64_t hc, int64_t hidden,
                    float* collapsed) {
  for (int64_t d = 0; d < hidden; ++d) collapsed[d] = pre[0] * streams[d];
  for (int64_t i = 1; i < hc; ++i)
    for (int64_t d = 0; d < hidden; ++d) collapsed[d] += pre[i] * streams[i * hidden + d];
}

void hyper_expand(const HyperMix& mix, const float* block_out, int64_t hc, int64_t hidden,
                  float* streams) {
  std::vector<float> old(streams, streams + hc * hidden);
  for (int64_t k = 0; k < hc; ++k) {
    float* dst = streams + k * hidden;
    for (int64_t d = 0; d < hidden; ++d) dst[d] = mix.post[k] * block_out[d];
    for (int64_t j = 0; j < hc; ++j) {
      const float c = mix.comb[j * hc + k];
      const float* src = old.data() + j * hidden;
      for (int64_t d = 0; d < hidden; ++d) dst[d] += c * src[d];
    }
  }
}

void hyper_head(const float* fn, const float* base, float scale, const float* streams, int64_t hc,
                int64_t hidden, float hc_eps, float rms_eps, float* out) {
  float mixes[kMaxHcMult];
  project(fn, hc, streams, hc * hidden, rms_eps, mixes);
  float pre[kMaxHcMult];
  for (int64_t i = 0; i < hc; ++i) pre[i] = sigmoid(mixes[i] * scale + base[i]) + hc_eps;
  hyper_collapse(pre, streams, hc, hidden, out);
}

}  // namespace agentrt::engine
