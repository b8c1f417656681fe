#include "grammars/python_json.h"

#include <gtest/gtest.h>

namespace agentrt::grammars {
namespace {

using ojson = nlohmann::ordered_json;

TEST(PythonJson, NestedValuesAndEscapes) {
  auto v = ojson::parse(
      R"({"b": [1, 2.5, "x\ny\u0001é"], "a": {"t": true, "n": null}, "e": {}, "f": []})");
  EXPECT_EQ(python_json_dumps(v),
            "{\"b\": [1, 2.5, \"x\\ny\\u0001é\"], \"a\": {\"t\": true, \"n\": null}, "
            "\"e\": {}, \"f\": []}");
}

TEST(PythonJson, MatchesJsonDumps) {
  EXPECT_EQ(python_json_dumps(ojson::parse(R"({"b": 1, "a": [1.5, true, null, "é\n\u0001"]})")),
            "{\"b\": 1, \"a\": [1.5, true, null, \"é\\n\\u0001\"]}");
  EXPECT_EQ(python_json_dumps(ojson(1e-7)), "1e-07");
  EXPECT_EQ(python_json_dumps(ojson(1e16)), "1e+16");
  EXPECT_EQ(python_json_dumps(ojson(1e15)), "1000000000000000.0");
  EXPECT_EQ(python_json_dumps(ojson(0.0001)), "0.0001");
  EXPECT_EQ(python_json_dumps(ojson(2.0)), "2.0");
  EXPECT_EQ(python_json_dumps(ojson(123.456)), "123.456");
}

}  // namespace
}  // namespace agentrt::grammars
