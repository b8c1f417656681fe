// A small JSON Schema validator for concrete values, used at compile time to keep the enum and
// const values (and literal property names) that satisfy their sibling keywords. It supports
// the keywords the compiler supports, minus references.
#pragma once

#include "grammars/schema_refs.h"

namespace agentrt::grammars {

// Whether `value` satisfies `schema`; throws std::invalid_argument for a keyword it cannot check.
bool schema_accepts(const SchemaJson& schema, const SchemaJson& value);

// JSON Schema equality: numbers compare by value (1 == 1.0), objects ignore key order.
bool json_equal(const SchemaJson& a, const SchemaJson& b);

}  // namespace agentrt::grammars
