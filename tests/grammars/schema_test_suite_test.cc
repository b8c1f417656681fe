// The official JSON-Schema-Test-Suite (draft 2020-12, ../shared/data/json-schema-test-suite):
// every schema we compile must accept exactly the instances the suite marks valid, each
// serialised compactly. Schemas using unsupported keywords fail to compile and are counted as
// skipped. Disagreements are failures except the documented best-effort cases in kKnownGaps
// (docs/grammars.md explains each).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "grammar_test_support.h"
#include "grammars/compiled_grammar.h"
#include "grammars/json_schema.h"
#include "grammars/matcher.h"

namespace agentrt::grammars {
namespace {

using ojson = nlohmann::ordered_json;

// Documented approximations (docs/grammars.md), as "file | schema description" (every test
// of the group) or "file | schema description | test description".
const std::set<std::string>& known_gaps() {
  static const std::set<std::string> gaps = {
      // Formats are asserted (2020-12 makes them annotations by default).
      "format.json | email format", "format.json | ipv4 format", "format.json | ipv6 format",
      "format.json | hostname format", "format.json | date format", "format.json | date-time format",
      "format.json | time format", "format.json | uri format", "format.json | uri-reference format",
      "format.json | uuid format", "format.json | duration format",
      // Integers are written without a fraction; numbers in exponent form are not matched to
      // constants; constant objects keep their key order.
      "type.json | integer type matches integers | a float with zero fractional part is an integer",
      "const.json | float and integers are equal up to 64-bit representation limits | float is valid",
      "const.json | const with object | same object with different property order is valid",
      // $schema pointing to a custom metaschema is not interpreted.
      "vocabulary.json | schema that uses custom metaschema with with no validation vocabulary",
  };
  return gaps;
}

TEST(SchemaTestSuite, Draft2020_12AgreesOnSupportedSchemas) {
  const std::filesystem::path dir =
      std::filesystem::path(AGENTRT_SHARED_DATA) / "json-schema-test-suite/tests/draft2020-12";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no JSON-Schema-Test-Suite at " << dir;
  auto index = testing::small_index();
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  int schemas = 0, compiled = 0, tests = 0, agreed = 0, known = 0;
  std::vector<std::string> failures;
  for (const auto& file : files) {
    std::ifstream in(file);
    const ojson groups = ojson::parse(in);
    for (const auto& group : groups) {
      ++schemas;
      std::shared_ptr<const CompiledGrammar> grammar;
      try {
        grammar = compile(grammar_from_json_schema(group["schema"]), index);
      } catch (const GrammarError&) {
        continue;  // unsupported keyword or unsatisfiable: skipped, counted
      }
      ++compiled;
      for (const auto& t : group["tests"]) {
        ++tests;
        GrammarMatcher m(grammar);
        const std::string text = t["data"].dump();
        const bool accepted = m.accept_bytes(text) && m.can_end();
        if (accepted == t["valid"].get<bool>()) {
          ++agreed;
          continue;
        }
        const std::string group_id =
            file.filename().string() + " | " + group["description"].get<std::string>();
        const std::string id = group_id + " | " + t["description"].get<std::string>();
        if (known_gaps().count(id) || known_gaps().count(group_id)) {
          ++known;
        } else {
          failures.push_back(id + (accepted ? " (accepted an invalid instance " : " (rejected a valid instance ") + text + ")");
        }
      }
    }
  }
  std::cout << "JSON-Schema-Test-Suite draft2020-12: " << compiled << " of " << schemas
            << " schemas compiled (" << schemas - compiled << " skipped: unsupported keywords); "
            << agreed << " of " << tests << " tests agree, " << known << " known gaps, "
            << failures.size() << " disagreements\n";
  for (const auto& f : failures) ADD_FAILURE() << f;
}

}  // namespace
}  // namespace agentrt::grammars
