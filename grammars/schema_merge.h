// Schema intersection for allOf (and for sibling keywords distributed into anyOf/oneOf
// branches): merge_schemas(a, b) accepts exactly the instances both accept, or throws
// GrammarError naming the schema path when the two cannot be merged exactly.
#pragma once

#include <string>

#include "grammars/schema_refs.h"

namespace agentrt::grammars {

SchemaJson merge_schemas(const SchemaJson& a, const SchemaJson& b, const std::string& path);

// Keywords that never constrain an instance (annotations and containers of definitions).
bool is_annotation_keyword(const std::string& key);

// JSON Schema vocabulary keywords (draft 4 to 2020-12); keys outside it are unknown keywords,
// which the specification says to ignore.
bool is_vocabulary_keyword(const std::string& key);

// Rewrites dependentRequired / dependentSchemas / dependencies into allOf/anyOf form.
SchemaJson expand_dependencies(const SchemaJson& schema, const std::string& path);

}  // namespace agentrt::grammars
