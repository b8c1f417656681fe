// Fast kernels against their plain references on random inputs of awkward sizes.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/attention.h"
#include "engine/indexer.h"
#include "engine/matmul.h"
#include "engine/parallel.h"
#include "engine/rope.h"

namespace agentrt::engine {
namespace {

std::vector<float> random_vec(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

uint16_t to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return uint16_t((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - b[i]));
    den = std::max(den, std::abs(double(b[i])));
  }
  return num / std::max(den, 1e-30);
}

TEST(Matmul, MatchesReferenceOnAwkwardSizes) {
  std::mt19937 rng(7);
  WorkerPool pool(3);
  Serial serial;
  for (auto [n, rows, cols] : {std::tuple{1, 37, 129},
                               {2, 5, 7},
                               {3, 64, 48},
                               {17, 33, 255},
                               {40, 9, 1000},
                               {1, 1, 1},
                               {5, 130, 15}}) {
    const auto x = random_vec(rng, size_t(n) * cols);
    const auto wf = random_vec(rng, size_t(rows) * cols);
    std::vector<uint16_t> wb(wf.size()), wh(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) {
      wb[i] = to_bf16(wf[i]);
      wh[i] = _cvtss_sh(wf[i], 0);
    }
    for (auto [type, data] : {std::pair<WeightType, const void*>{WeightType::f32, wf.data()},
                              {WeightType::bf16, wb.data()},
                              {WeightType::f16, wh.data()}}) {
      WeightMatrix w{type, rows, cols, data};
      std::vector<float> want(size_t(n) * rows), got(want.size()), got1(want.size());
      matmul_reference(x.data(), n, w, want.data());
      matmul(x.data(), n, w, got.data(), pool);
      matmul(x.data(), n, w, got1.data(), serial);
      EXPECT_LE(max_rel(got, want), 1e-5)
          << n << "x" << rows << "x" << cols << " type " << int(type);
      EXPECT_LE(max_rel(got1, want), 1e-5);
    }
  }
}

TEST(Matmul, RowSliceViewsTheRightRows) {
  std::mt19937 rng(3);
  const auto wf = random_vec(rng, 6 * 10), x = random_vec(rng, 10);
  WeightMatrix w{WeightType::f32, 6, 10, wf.data()};
  std::vector<float> full(6), part(2);
  matmul_reference(x.data(), 1, w, full.data());
  matmul_reference(x.data(), 1, w.slice_rows(3, 2), part.data());
  EXPECT_FLOAT_EQ(part[0], full[3]);
  EXPECT_FLOAT_EQ(part[1], full[4]);
}

TEST(Attention, AttendMatchesReference) {
  std::mt19937 rng(11);
  for (auto [dim, keys] : {std::pair{32, 1}, {17, 5}, {64, 300}, {9, 0}, {128, 33}}) {
    const auto q = random_vec(rng, dim), k = random_vec(rng, size_t(dim) * keys);
    std::vector<const float*> ptrs;
    for (int i = 0; i < keys; ++i) ptrs.push_back(k.data() + size_t(i) * dim);
    std::vector<float> want(dim), got(dim), scratch(keys + 1);
    const float sink = 0.3f, scale = 1.0f / std::sqrt(float(dim));
    attend_reference(q.data(), dim, scale, sink, ptrs.data(), keys, want.data());
    attend(q.data(), dim, scale, sink, ptrs.data(), keys, got.data(), scratch.data());
    EXPECT_LE(max_rel(got, want), 1e-5) << dim << " " << keys;
  }
}

TEST(Attention, SinkOnlyGivesZeroOutput) {
  const float q[4] = {1, 2, 3, 4};
  float out[4] = {9, 9, 9, 9}, scratch[1];
  attend(q, 4, 0.5f, 1.0f, nullptr, 0, out, scratch);
  for (float v : out) EXPECT_EQ(v, 0.0f);
}

TEST(Rope, InverseUndoesRotation) {
  RopeParams p;
  p.dim = 8;
  RopeTable rope(p);
  std::mt19937 rng(5);
  auto x = random_vec(rng, 20);
  const auto orig = x;
  float c[4], s[4];
  rope.angles(123, c, s);
  rope.apply(x.data(), 20, c, s);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(x[i], orig[i]);  // nope part untouched
  rope.apply(x.data(), 20, c, s, true);
  for (int i = 0; i < 20; ++i) EXPECT_NEAR(x[i], orig[i], 1e-5);
}

TEST(Indexer, TiesGoToTheLowerIndex) {
  // One head, weights 1: every key scoring relu(q.k) = 0 ties; the lowest indices win.
  RowStore keys;
  keys.width = 2;
  for (float v : {-1.f, -2.f, 3.f, -4.f, -5.f, 2.f}) {
    float* r = keys.append();
    r[0] = v;
    r[1] = 0;
  }
  const float q[2] = {1, 0}, w[1] = {1};
  std::vector<int64_t> chosen;
  indexer_select(q, w, 1, 2, keys, 6, 4, chosen);
  EXPECT_EQ(chosen, (std::vector<int64_t>{0, 1, 2, 5}));
  indexer_select(q, w, 1, 2, keys, 3, 4, chosen);  // fewer visible than k: all of them
  EXPECT_EQ(chosen, (std::vector<int64_t>{0, 1, 2}));
}

}  // namespace
}  // namespace agentrt::engine

namespace agentrt::engine {
namespace {

float kE4m3ForTest(uint8_t b) {
  const int exp = (b >> 3) & 15, man = b & 7;
  float v = exp == 0 ? std::ldexp(man / 8.0f, -6) : std::ldexp(1.0f + man / 8.0f, exp - 7);
  return (b & 0x80) ? -v : v;
}

// Nearest e4m3 byte for a float (exhaustive search: test-only).
uint8_t to_e4m3(float f) {
  uint8_t best = 0;
  float err = INFINITY;
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN
    const int exp = (b >> 3) & 15, man = b & 7;
    float v = exp == 0 ? std::ldexp(man / 8.0f, -6) : std::ldexp(1.0f + man / 8.0f, exp - 7);
    if (b & 0x80) v = -v;
    if (std::abs(v - f) < err) err = std::abs(v - f), best = uint8_t(b);
  }
  return best;
}

TEST(Matmul, Fp8BlockScaledMatchesReferenceAndSlices) {
  std::mt19937 rng(9);
  for (auto [n, rows, cols] : {std::tuple{1, 300, 257},
                               {5, 130, 128},
                               {2, 129, 1},
                               {7, 256, 300},
                               {3, 200, 300},
                               {4, 131, 129}}) {
    const auto x = random_vec(rng, size_t(n) * cols);
    const auto wf = random_vec(rng, size_t(rows) * cols, 3.0f);
    std::vector<uint8_t> q(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) q[i] = to_e4m3(wf[i]);
    const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
    std::vector<float> scales(rb * cb);
    std::vector<uint8_t> e8(rb * cb);
    for (int64_t i = 0; i < rb * cb; ++i) {
      e8[i] = uint8_t(127 + int(i % 5) - 2);
      scales[i] = std::ldexp(1.0f, int(e8[i]) - 127);
    }
    for (auto [stype, sdata] : {std::pair<ScaleType, const void*>{ScaleType::f32, scales.data()},
                                {ScaleType::e8m0, e8.data()}}) {
      WeightMatrix w{WeightType::f8_e4m3, rows, cols, q.data(), sdata, stype, 0};
      // Expected: decode by hand (scale of the element's block) and multiply in double.
      std::vector<float> want(size_t(n) * rows), got(want.size());
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<float> row(cols);
        decode_weight_row(w, r, row.data());
        for (int64_t c = 0; c < cols; ++c) {
          const float v = kE4m3ForTest(q[r * cols + c]) * scales[(r / 128) * cb + c / 128];
          ASSERT_EQ(row[c], v) << r << "," << c;
        }
      }
      matmul_reference(x.data(), n, w, want.data());
      WorkerPool pool(2);
      matmul(x.data(), n, w, got.data(), pool);
      EXPECT_LE(max_rel(got, want), 1e-5) << n << "x" << rows << "x" << cols;
      // A row slice starting past the first scale block row reads the right scales.
      if (rows > 130) {
        const WeightMatrix s = w.slice_rows(129, 2);
        std::vector<float> part(size_t(n) * 2);
        matmul_reference(x.data(), n, s, part.data());
        for (int t = 0; t < n; ++t) {
          EXPECT_NEAR(part[t * 2], want[t * rows + 129],
                      1e-4 * (1 + std::abs(want[t * rows + 129])));
          EXPECT_NEAR(part[t * 2 + 1], want[t * rows + 130],
                      1e-4 * (1 + std::abs(want[t * rows + 130])));
        }
      }
    }
  }
}

}  // namespace
}  // namespace agentrt::engine
