#include "grammars/hf_vocabulary.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "grammars/utf8.h"

namespace agentrt::grammars {
namespace {

// GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other bytes to
// U+0100 upwards in byte order.
std::array<int, 0x180> unicode_to_byte_table() {
  std::array<int, 0x180> table;
  table.fill(-1);
  int next = 0x100;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    table[printable ? b : next++] = b;
  }
  return table;
}

}  // namespace

std::string byte_level_decode(const std::string& token) {
  static const std::array<int, 0x180> table = unicode_to_byte_table();
  std::string out;
  size_t pos = 0;
  while (pos < token.size()) {
    int32_t cp = decode_utf8(token, pos);
    if (cp < 0 || cp >= static_cast<int32_t>(table.size()) || table[cp] < 0) {
      throw std::runtime_error("byte-level token '" + token +
                               "' has a character outside the "
                               "byte alphabet at byte " +
                               std::to_string(pos));
    }
    out += static_cast<char>(table[cp]);
  }
  return out;
}

Vocabulary load_hf_vocabulary(const std::string& path,
                              const std::vector<std::string>& stop_token_names) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open tokenizer file " + path);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  const nlohmann::json& vocab = doc.at("model").at("vocab");
  if (!vocab.is_object()) throw std::runtime_error(path + ": model.vocab is not an object");
  Vocabulary out;
  auto place = [&](int64_t id, std::string bytes) {
    if (id < 0 || id > 10'000'000) {
      throw std::runtime_error(path + ": token id " + std::to_string(id) + " out of range");
    }
    if (static_cast<size_t>(id) >= out.token_bytes.size()) out.token_bytes.resize(id + 1);
    out.token_bytes[id] = std::move(bytes);
  };
  // Added tokens (written as text, not byte-level) may repeat in model.vocab: they win.
  std::vector<int64_t> added;
  if (doc.contains("added_tokens")) {
    for (const nlohmann::json& t : doc["added_tokens"]) added.push_back(t.at("id").get<int64_t>());
  }
  std::sort(added.begin(), added.end());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    auto id = it.value().get<int64_t>();
    if (std::binary_search(added.begin(), added.end(), id)) continue;
    place(id, byte_level_decode(it.key()));
  }
  if (doc.contains("added_tokens")) {
    for (const nlohmann::json& t : doc["added_tokens"]) {
      auto id = t.at("id").get<int64_t>();
      std::string content = t.at("content").get<std::string>();
      place(id, content);
      bool stop = std::find(stop_token_names.begin(), stop_token_names.end(), content) !=
                  stop_token_names.end();
      if (stop) {
        out.stop_tokens.push_back(static_cast<int32_t>(id));
      } else if (t.value("special", false)) {
        out.special_tokens.push_back(static_cast<int32_t>(id));
      }
    }
  }
  // Ids nobody defined stay as empty tokens, which the index never allows.
  return out;
}

}  // namespace agentrt::grammars
