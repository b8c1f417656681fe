// Our rope tables against transformers' (dumped by scripts/make_engine_fixtures.py).
#include "engine/rope.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/forward_config.h"
#include "tests/engine/golden_fixture.h"

namespace agentrt::engine {
namespace {

TEST(Rope, InvFreqMatchesTransformersPlainAndYarn) {
  for (const std::string& name : testing::golden_names()) {
    const auto dir = testing::golden_dir(name);
    const ForwardConfig c = ForwardConfig::from_file(dir / "config.json");
    std::ifstream in(dir / "rope.json");
    ASSERT_TRUE(in) << name;
    const auto j = nlohmann::json::parse(in);
    for (auto [key, params] : {std::pair{"main", c.rope_main}, {"compress", c.rope_compress}}) {
      const auto want = j[key]["inv_freq"].get<std::vector<float>>();
      const RopeTable rope(params);
      ASSERT_EQ(rope.inv_freq().size(), want.size()) << name << " " << key;
      for (size_t i = 0; i < want.size(); ++i)
        EXPECT_NEAR(rope.inv_freq()[i], want[i], 2e-7 * std::abs(want[i]))
            << name << " " << key << " " << i;
      EXPECT_FLOAT_EQ(j[key]["attention_scaling"].get<float>(), 1.0f);
    }
  }
  // tiny_a's compress rope is YaRN: the config must say so.
  const ForwardConfig a = ForwardConfig::from_file(testing::golden_dir("tiny_a") / "config.json");
  EXPECT_EQ(a.rope_compress.kind, RopeParams::Kind::yarn);
  EXPECT_EQ(a.rope_main.kind, RopeParams::Kind::plain);
}

}  // namespace
}  // namespace agentrt::engine
