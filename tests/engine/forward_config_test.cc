// ForwardConfig: the fields the forward pass reads, parsed from transformers' config.json
// spellings (new and legacy), with errors that name the field.
#include "engine/forward_config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/engine/golden_fixture.h"

namespace agentrt::engine {
namespace {

nlohmann::json base() {
  return {{"vocab_size", 100},
          {"hidden_size", 32},
          {"num_attention_heads", 2},
          {"head_dim", 16},
          {"q_lora_rank", 8},
          {"o_groups", 2},
          {"o_lora_rank", 4},
          {"sliding_window", 8},
          {"hc_mult", 2},
          {"n_routed_experts", 4},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 8},
          {"num_hidden_layers", 3},
          {"index_n_heads", 2},
          {"index_head_dim", 8},
          {"index_topk", 4},
          {"partial_rotary_factor", 0.5}};
}

std::string error_of(const nlohmann::json& j) {
  try {
    ForwardConfig::from_json(j, "cfg.json");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(ForwardConfig, LegacySpellings) {
  auto j = base();
  j["compress_ratios"] = {0, 4, 128};
  j["num_hash_layers"] = 1;
  j["qk_rope_head_dim"] = 4;
  j["rope_scaling"] = {
      {"type", "yarn"}, {"factor", 16}, {"original_max_position_embeddings", 65536}};
  const ForwardConfig c = ForwardConfig::from_json(j, "cfg.json");
  ASSERT_EQ(c.layers.size(), 3u);
  EXPECT_EQ(c.layers[0].attention, AttentionKind::sliding);
  EXPECT_EQ(c.layers[1].attention, AttentionKind::csa);
  EXPECT_EQ(c.layers[1].compress_rate, 4);
  EXPECT_EQ(c.layers[2].attention, AttentionKind::hca);
  EXPECT_EQ(c.layers[2].compress_rate, 128);
  EXPECT_EQ(c.layers[0].router, RouterKind::hash);
  EXPECT_EQ(c.layers[1].router, RouterKind::topk);
  EXPECT_EQ(c.rope_dim, 4);
  EXPECT_EQ(c.rope_compress.kind, RopeParams::Kind::yarn);
  EXPECT_EQ(c.rope_main.kind, RopeParams::Kind::plain);
  EXPECT_DOUBLE_EQ(c.rope_compress.theta, 160000.0);
}

TEST(ForwardConfig, FixtureConfigsParse) {
  for (const auto& name : testing::golden_names()) {
    const ForwardConfig c = ForwardConfig::from_file(testing::golden_dir(name) / "config.json");
    EXPECT_FALSE(c.layers.empty()) << name;
  }
}

TEST(ForwardConfig, ErrorsNameTheField) {
  auto j = base();
  j.erase("hidden_size");
  EXPECT_NE(error_of(j).find("hidden_size"), std::string::npos);
  j = base();
  j["layer_types"] = {"sliding_attention", "dense_attention", "sliding_attention"};
  EXPECT_NE(error_of(j).find("dense_attention"), std::string::npos);
  j = base();
  j["num_experts_per_tok"] = 9;
  EXPECT_NE(error_of(j).find("num_experts_per_tok"), std::string::npos);
  j = base();
  j["o_groups"] = 3;
  EXPECT_NE(error_of(j).find("o_groups"), std::string::npos);
  j = base();
  j["layer_types"] = {"sliding_attention"};
  EXPECT_NE(error_of(j).find("layer_types"), std::string::npos);
  j = base();
  j["hc_mult"] = 32;
  EXPECT_NE(error_of(j).find("hc_mult"), std::string::npos);
  EXPECT_NE(error_of(j).find("cfg.json"), std::string::npos);
}

}  // namespace
}  // namespace agentrt::engine
