// Reads one golden fixture folder made by scripts/make_engine_fixtures.py.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/model.h"

namespace agentrt::engine::testing {

inline std::filesystem::path golden_dir(const std::string& name) {
  return std::filesystem::path(AGENTRT_SOURCE_DIR) / "tests/engine/fixtures/golden" / name;
}

inline const std::vector<std::string>& golden_names() {
  static const std::vector<std::string> names = {"tiny_a", "tiny_b", "tiny_c"};
  return names;
}

struct GoldenFixture {
  std::filesystem::path dir;
  std::vector<int32_t> ids;
  std::vector<int64_t> schedule;
  std::vector<float> prefill;  // [positions][vocab]
  std::vector<float> chunked;
  int64_t vocab = 0;

  static GoldenFixture load(const std::string& name) {
    GoldenFixture f;
    f.dir = golden_dir(name);
    auto read_json = [&](const char* file) {
      std::ifstream in(f.dir / file);
      if (!in) throw std::runtime_error((f.dir / file).string() + ": cannot open");
      return nlohmann::json::parse(in);
    };
    f.ids = read_json("ids.json").get<std::vector<int32_t>>();
    f.schedule = read_json("schedule.json").get<std::vector<int64_t>>();
    auto read_bin = [&](const char* file) {
      std::ifstream in(f.dir / file, std::ios::binary);
      if (!in) throw std::runtime_error((f.dir / file).string() + ": cannot open");
      in.seekg(0, std::ios::end);
      std::vector<float> v(size_t(in.tellg()) / 4);
      in.seekg(0);
      in.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * 4));
      return v;
    };
    f.prefill = read_bin("logits_prefill.bin");
    f.chunked = read_bin("logits_chunked.bin");
    f.vocab = int64_t(f.prefill.size() / f.ids.size());
    return f;
  }
};

// Relative L2 error of row `row` of `got` against `want` (both [rows][n]).
inline double rel_l2(const float* got, const float* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Sequences of `model`, sequence i fed the first starts[i] of `ids` (the decode-batch tests).
struct StartedSequences {
  std::vector<std::unique_ptr<ModelSequence>> owned;
  std::vector<ModelSequence*> ptrs;
};
inline StartedSequences start_sequences(const Model& model, std::span<const int32_t> ids,
                                        std::span<const size_t> starts) {
  StartedSequences out;
  for (size_t s : starts) {
    out.owned.push_back(model.new_sequence());
    out.owned.back()->forward(ids.first(s));
    out.ptrs.push_back(out.owned.back().get());
  }
  return out;
}

}  // namespace agentrt::engine::testing
