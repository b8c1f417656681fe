#include "grammars/schema_refs.h"

#include <utility>
#include <vector>

#include "grammars/grammar.h"
#include "grammars/json_schema_compiler.h"

namespace agentrt::grammars {
namespace {

std::string last_segment(const std::string& uri) {
  std::string s = uri;
  while (!s.empty() && s.back() == '/') s.pop_back();
  size_t slash = s.rfind('/');
  return slash == std::string::npos ? s : s.substr(slash + 1);
}

std::string percent_decode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

template <typename Json>
void check_nesting(const Json& schema) {
  std::vector<std::pair<const Json*, std::string>> pending{{&schema, ""}};
  std::vector<size_t> depths{0};
  while (!pending.empty()) {
    auto [node, path] = std::move(pending.back());
    const size_t depth = depths.back();
    pending.pop_back();
    depths.pop_back();
    if (!node->is_structured()) continue;
    if (depth == kMaxSchemaNesting) {
      throw GrammarError(display_path(path) + ": schema nested more than " +
                         std::to_string(kMaxSchemaNesting) + " levels deep");
    }
    if (node->is_object()) {
      for (auto it = node->begin(); it != node->end(); ++it) {
        pending.emplace_back(&it.value(), path + "/" + pointer_token(it.key()));
        depths.push_back(depth + 1);
      }
    } else {
      for (size_t i = 0; i < node->size(); ++i) {
        pending.emplace_back(&(*node)[i], path + "/" + std::to_string(i));
        depths.push_back(depth + 1);
      }
    }
  }
}

}  // namespace

void check_schema_nesting(const nlohmann::ordered_json& schema) { check_nesting(schema); }
void check_schema_nesting(const nlohmann::json& schema) { check_nesting(schema); }

std::string pointer_token(const std::string& key) {
  std::string out;
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

SchemaRefResolver::SchemaRefResolver(const SchemaJson& root) : root_(root) {
  check_schema_nesting(root);
  index(root, "");
}

void SchemaRefResolver::index(const SchemaJson& node, const std::string& pointer) {
  if (node.is_object()) {
    for (const char* key : {"$id", "id"}) {
      auto it = node.find(key);
      if (it != node.end() && it->is_string()) {
        std::string id = it->get<std::string>();
        if (!id.empty() && id[0] == '#') {
          add_anchor(id.substr(1), pointer);  // draft-06 style plain-name fragment id
        } else {
          size_t hash = id.find('#');
          ids_.emplace(hash == std::string::npos ? id : id.substr(0, hash), pointer);
        }
      }
    }
    auto anchor = node.find("$anchor");
    if (anchor != node.end() && anchor->is_string())
      add_anchor(anchor->get<std::string>(), pointer);
    for (const auto& [k, v] : node.items()) {
      // Values of these keywords are data, not schemas.
      if (k == "enum" || k == "const" || k == "default" || k == "examples") continue;
      index(v, pointer + "/" + pointer_token(k));
    }
  } else if (node.is_array()) {
    for (size_t i = 0; i < node.size(); ++i) index(node[i], pointer + "/" + std::to_string(i));
  }
}

void SchemaRefResolver::add_anchor(const std::string& name, const std::string& pointer) {
  // The same anchor under different base URIs needs URI resolution we do not do: mark it
  // ambiguous so that references to it fail instead of picking one.
  auto [it, inserted] = anchors_.emplace(name, pointer);
  if (!inserted && it->second != pointer) it->second = kAmbiguous;
}

const SchemaJson* SchemaRefResolver::at_pointer(const std::string& pointer) const {
  const SchemaJson* node = &root_;
  size_t pos = 0;
  while (pos < pointer.size()) {
    if (pointer[pos] != '/') return nullptr;
    size_t next = pointer.find('/', pos + 1);
    std::string token =
        pointer.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1);
    std::string key;
    for (size_t i = 0; i < token.size(); ++i) {
      if (token[i] == '~' && i + 1 < token.size()) {
        key += token[i + 1] == '1' ? '/' : '~';
        ++i;
      } else {
        key += token[i];
      }
    }
    if (node->is_object()) {
      auto it = node->find(key);
      if (it == node->end()) return nullptr;
      node = &*it;
    } else if (node->is_array()) {
      if (key.empty() || key.find_first_not_of("0123456789") != std::string::npos) return nullptr;
      size_t idx = std::stoul(key);
      if (idx >= node->size()) return nullptr;
      node = &(*node)[idx];
    } else {
      return nullptr;
    }
    if (next == std::string::npos) break;
    pos = next;
  }
  return node;
}

SchemaRefResolver::Target SchemaRefResolver::resolve(const std::string& ref,
                                                     const std::string& path) const {
  auto fail = [&](const std::string& what) {
    throw GrammarError((path.empty() ? "/" : path) + ": $ref '" + ref + "': " + what);
  };
  size_t hash = ref.find('#');
  std::string base = hash == std::string::npos ? ref : ref.substr(0, hash);
  std::string frag = hash == std::string::npos ? "" : percent_decode(ref.substr(hash + 1));
  std::string doc;
  if (!base.empty()) {
    auto it = ids_.find(base);
    if (it == ids_.end()) {
      // Relative references against the root $id: match on the last path segment.
      for (const auto& [id, ptr] : ids_) {
        if (last_segment(id) == last_segment(base)) {
          it = ids_.find(id);
          break;
        }
      }
    }
    if (it == ids_.end())
      fail("remote or unknown document (only references within the schema are supported)");
    doc = it->second;
  }
  std::string pointer;
  if (frag.empty() || frag[0] == '/') {
    pointer = doc + frag;
  } else {
    auto it = anchors_.find(frag);
    if (it == anchors_.end()) fail("unknown anchor '" + frag + "'");
    if (it->second == kAmbiguous) fail("anchor '" + frag + "' is defined more than once");
    pointer = it->second;
  }
  const SchemaJson* target = at_pointer(pointer);
  if (!target) fail("no schema at JSON pointer '" + pointer + "'");
  return Target{target, pointer};
}

}  // namespace agentrt::grammars
