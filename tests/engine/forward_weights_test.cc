// ForwardWeights: every tensor checked against the config; errors name the tensor and file.
#include "engine/forward_weights.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "tests/engine/golden_fixture.h"

namespace agentrt::engine {
namespace {

namespace fs = std::filesystem;

// A copy of the tiny_b fixture whose safetensors header went through `edit`.
fs::path edited_copy(const std::string& tag, const std::function<void(nlohmann::json&)>& edit) {
  const fs::path src = testing::golden_dir("tiny_b");
  const fs::path dir =
      fs::temp_directory_path() / ("agentrt-fw-test-" + tag + "-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(src / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
  std::ifstream in(src / "model.safetensors", std::ios::binary);
  uint64_t len;
  in.read(reinterpret_cast<char*>(&len), 8);
  std::string header(len, '\0');
  in.read(header.data(), std::streamsize(len));
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto j = nlohmann::json::parse(header);
  edit(j);
  const std::string h = j.dump();
  const uint64_t hl = h.size();
  std::ofstream out(dir / "model.safetensors", std::ios::binary);
  out.write(reinterpret_cast<const char*>(&hl), 8);
  out.write(h.data(), std::streamsize(h.size()));
  out.write(data.data(), std::streamsize(data.size()));
  return dir;
}

std::string load_error(const fs::path& dir) {
  try {
    ForwardWeights::load(dir, ForwardConfig::from_file(dir / "config.json"));
  } catch (const std::exception& e) {
    fs::remove_all(dir);
    return e.what();
  }
  fs::remove_all(dir);
  return "";
}

TEST(ForwardWeights, LoadsTheFixtures) {
  for (const auto& name : testing::golden_names()) {
    const auto dir = testing::golden_dir(name);
    const ForwardConfig c = ForwardConfig::from_file(dir / "config.json");
    const ForwardWeights w = ForwardWeights::load(dir, c);
    EXPECT_EQ(w.layers.size(), c.layers.size()) << name;
    EXPECT_GT(w.matrix_bytes(), 0);
  }
}

TEST(ForwardWeights, MissingTensorIsNamed) {
  const auto dir =
      edited_copy("missing", [](nlohmann::json& j) { j.erase("model.layers.1.attn.wkv.weight"); });
  EXPECT_NE(load_error(dir).find("layers.1.attn.wkv.weight"), std::string::npos);
}

TEST(ForwardWeights, MisShapedTensorIsNamedWithBothShapes) {
  const auto dir = edited_copy("shape", [](nlohmann::json& j) {
    auto& t = j["model.norm.weight"];
    t["shape"] = {20, 2};  // same byte size, wrong shape
  });
  const std::string e = load_error(dir);
  EXPECT_NE(e.find("norm.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[20, 2]"), std::string::npos) << e;
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;
}

TEST(ForwardWeights, BadOffsetsAreRejected) {
  const auto dir = edited_copy("offsets", [](nlohmann::json& j) {
    j["model.norm.weight"]["data_offsets"] = {0, 1u << 30};
  });
  EXPECT_NE(load_error(dir).find("norm.weight"), std::string::npos);
}

TEST(ForwardWeights, OutOfRangeExpertIdInTid2eidIsRejected) {
  // tid2eid of layer 0 is I64; point it at bytes of a float tensor so ids are garbage.
  const auto dir = edited_copy("tid2eid", [](nlohmann::json& j) {
    const auto& off = j["model.embed_tokens.weight"]["data_offsets"];
    const uint64_t begin = off[0].get<uint64_t>();
    j["model.layers.0.ffn.gate.tid2eid"]["data_offsets"] = {begin, begin + 600 * 3 * 8};
  });
  EXPECT_NE(load_error(dir).find("tid2eid"), std::string::npos);
}

}  // namespace
}  // namespace agentrt::engine

namespace agentrt::engine {
namespace {

TEST(ForwardWeights, UnexpectedTensorIsNamed) {
  const auto dir = edited_copy("extra", [](nlohmann::json& j) {
    j["model.layers.9.attn.wkv.weight"] = j["model.norm.weight"];
  });
  EXPECT_NE(load_error(dir).find("unexpected tensor 'layers.9.attn.wkv.weight'"),
            std::string::npos);
}

}  // namespace
}  // namespace agentrt::engine

namespace agentrt::engine {
namespace {

TEST(ForwardWeights, TiedEmbeddingsNeedNoHead) {
  const auto dir = edited_copy("tied", [](nlohmann::json& j) { j.erase("head.weight"); });
  EXPECT_NE(load_error(edited_copy("untied", [](nlohmann::json& j) { j.erase("head.weight"); }))
                .find("head.weight"),
            std::string::npos);
  std::ifstream in(dir / "config.json");
  auto cfg = nlohmann::json::parse(in);
  cfg["tie_word_embeddings"] = true;
  std::ofstream(dir / "config.json") << cfg.dump();
  const ForwardConfig c = ForwardConfig::from_file(dir / "config.json");
  const ForwardWeights w = ForwardWeights::load(dir, c);
  EXPECT_EQ(w.head.data, w.embed.data);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace agentrt::engine

namespace agentrt::engine {
namespace {

// The Hub checkpoints spell names without `model.` and call the router bias
// e_score_correction_bias; both load like transformers' spelling.
TEST(ForwardWeights, HubSpellingsLoad) {
  const auto dir = edited_copy("hub", [](nlohmann::json& j) {
    nlohmann::json renamed = nlohmann::json::object();
    for (auto& [k, v] : j.items()) {
      std::string n = k.rfind("model.", 0) == 0 ? k.substr(6) : k;
      if (n.ends_with(".gate.bias")) n = n.substr(0, n.size() - 5) + ".e_score_correction_bias";
      if (n == "embed_tokens.weight") n = "embed.weight";
      renamed[n] = v;
    }
    j = renamed;
  });
  const ForwardConfig c = ForwardConfig::from_file(dir / "config.json");
  const ForwardWeights w = ForwardWeights::load(dir, c);
  bool some_bias = false;
  for (const auto& l : w.layers) some_bias |= !l.moe.bias.empty();
  EXPECT_TRUE(some_bias);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace agentrt::engine
