// JSON-number grammars with bounds: exact digit-range grammars for integers (any size, bounds
// held as decimal strings), exact bounds for numbers when the bounds are integers (fractional
// bounds are rounded inward, see docs/grammars.md), decimal-step multipleOf and integer
// divisibility automata.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace agentrt::grammars {

struct NumberBound {
  std::string value;  // the bound as JSON number text, e.g. "-2.5", "1e+20"
  bool inclusive = true;
};

struct NumberConstraints {
  std::optional<NumberBound> lower;
  std::optional<NumberBound> upper;
  bool integer = false;           // no fraction, no exponent
  int max_fraction_digits = -1;   // multipleOf 10^-d; -1 = unlimited
  std::optional<int> divisor;     // integer multipleOf k (unbounded integers only)
};

// Builds the constraints of a schema's numeric keywords (minimum, maximum, exclusiveMinimum,
// exclusiveMaximum, multipleOf). `path` names the schema in errors; throws std::invalid_argument
// for what cannot be enforced soundly (e.g. multipleOf 0.3, multipleOf with bounds).
NumberConstraints number_constraints(const nlohmann::json& schema, bool integer,
                                     const std::string& path);

// EBNF for the JSON numbers satisfying `c`, or nullopt when none does. Divisibility automata
// need rules of their own: they are appended to `extra_rules` (name, body) with names starting
// with `rule_prefix`.
std::optional<std::string> number_ebnf(
    const NumberConstraints& c, const std::string& rule_prefix,
    std::vector<std::pair<std::string, std::string>>& extra_rules);

// EBNF for the plain decimal spellings of the number written `json_text` ("2" also as "2.0",
// "2.50" as "2.5"); JSON Schema compares numbers by value.
std::string number_literal_ebnf(const std::string& json_text);

// EBNF for canonical decimal integers in [lo, hi] (both >= 0; no hi = unbounded).
std::string digit_range_ebnf(const std::string& lo, const std::optional<std::string>& hi);

}  // namespace agentrt::grammars
