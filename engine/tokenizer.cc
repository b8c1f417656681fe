#include "engine/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <stdexcept>

#include "engine/pretokenizer.h"

namespace agentrt::engine {

namespace {

[[noreturn]] void fail(const std::filesystem::path& file, const std::string& what) {
  throw std::runtime_error(file.string() + ": " + what);
}

// GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest are shifted
// to code points 256+n. Returns code point -> byte (-1 where none).
std::vector<int> byte_level_decoder_table() {
  std::vector<int> cp_to_byte(512, -1);
  int shifted = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const int cp = printable ? b : 256 + shifted++;
    cp_to_byte[cp] = b;
  }
  return cp_to_byte;
}

// Byte-level vocab string (UTF-8 of the shifted alphabet) -> raw bytes; nullopt if it holds a
// character outside the alphabet.
std::optional<std::string> byte_level_to_bytes(std::string_view s, const std::vector<int>& table) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const DecodedChar d = decode_utf8_char(s, pos);
    if (d.invalid || d.cp >= table.size() || table[d.cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(table[d.cp]));
    pos += d.len;
  }
  return out;
}

nlohmann::json read_json(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, "cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(file, std::string("invalid JSON: ") + e.what());
  }
}

std::optional<std::string> token_text(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

std::shared_ptr<const Tokenizer> Tokenizer::load(const std::filesystem::path& dir_or_file) {
  std::filesystem::path file = dir_or_file;
  std::filesystem::path config_file;
  if (std::filesystem::is_directory(dir_or_file)) {
    file = dir_or_file / "tokenizer.json";
    config_file = dir_or_file / "tokenizer_config.json";
  } else {
    config_file = dir_or_file.parent_path() / "tokenizer_config.json";
  }
  if (!std::filesystem::exists(file)) fail(file, "tokenizer file not found");
  const nlohmann::json doc = read_json(file);

  auto tok = std::make_shared<Tokenizer>();
  tok->source_ = file;
  const auto& model = doc.value("model", nlohmann::json::object());
  if (model.value("type", "") != "BPE") fail(file, "model.type must be \"BPE\"");
  if (!model.contains("vocab") || !model["vocab"].is_object()) fail(file, "model.vocab missing");
  if (!model.contains("merges") || !model["merges"].is_array()) fail(file, "model.merges missing");

  int32_t max_id = -1;
  for (const auto& [text, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 24)) {
      fail(file, "model.vocab[\"" + text + "\"]: id must be a small non-negative integer");
    }
    max_id = std::max(max_id, id.get<int32_t>());
  }
  std::vector<AddedToken> added;
  for (const auto& entry : doc.value("added_tokens", nlohmann::json::array())) {
    if (!entry.contains("id") || !entry.contains("content") || !entry["content"].is_string()) {
      fail(file, "added_tokens: entry without id/content");
    }
    added.push_back({entry["content"].get<std::string>(), entry["id"].get<int32_t>(),
                     entry.value("special", false)});
    max_id = std::max(max_id, added.back().id);
  }
  tok->token_bytes_.assign(max_id + 1, std::string());
  tok->special_flags_.assign(max_id + 1, 0);
  for (const auto& a : added) {
    tok->token_bytes_[a.id] = a.content;
    tok->special_flags_[a.id] = a.special ? 3 : 1;
  }

  const std::vector<int> table = byte_level_decoder_table();
  for (const auto& [text, id_json] : model["vocab"].items()) {
    const int32_t id = id_json.get<int32_t>();
    if (tok->special_flags_[id]) continue;  // added token: its content is its text
    auto bytes = byte_level_to_bytes(text, table);
    if (!bytes) fail(file, "model.vocab[\"" + text + "\"]: not a byte-level token");
    tok->token_bytes_[id] = *bytes;
    tok->bytes_to_id_.emplace(std::move(*bytes), id);
  }
  for (int b = 0; b < 256; ++b) {
    auto it = tok->bytes_to_id_.find(std::string(1, static_cast<char>(b)));
    if (it == tok->bytes_to_id_.end())
      fail(file, "vocab lacks the token for byte " + std::to_string(b));
    tok->byte_token_[b] = it->second;
  }

  int32_t rank = 0;
  for (const auto& merge : model["merges"]) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos)
        fail(file, "model.merges[" + std::to_string(rank) + "]: no space");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      fail(file, "model.merges[" + std::to_string(rank) + "]: expected \"a b\" or [a, b]");
    }
    const auto lb = byte_level_to_bytes(left, table), rb = byte_level_to_bytes(right, table);
    if (!lb || !rb) fail(file, "model.merges[" + std::to_string(rank) + "]: not byte-level");
    const auto li = tok->bytes_to_id_.find(*lb), ri = tok->bytes_to_id_.find(*rb),
               mi = tok->bytes_to_id_.find(*lb + *rb);
    if (li == tok->bytes_to_id_.end() || ri == tok->bytes_to_id_.end() ||
        mi == tok->bytes_to_id_.end()) {
      fail(file, "model.merges[" + std::to_string(rank) + "]: \"" + left + " " + right +
                     "\" refers to tokens missing from the vocab");
    }
    const uint64_t key =
        (static_cast<uint64_t>(li->second) << 32) | static_cast<uint32_t>(ri->second);
    tok->merges_.try_emplace(key, Merge{rank, mi->second});
    ++rank;
  }

  std::sort(added.begin(), added.end(),
            [](const AddedToken& a, const AddedToken& b) { return a.content < b.content; });
  tok->added_ = std::move(added);
  tok->added_first_byte_.assign(256, 0);
  for (const auto& a : tok->added_) {
    if (!a.content.empty()) tok->added_first_byte_[static_cast<unsigned char>(a.content[0])] = 1;
  }

  if (std::filesystem::exists(config_file)) {
    const nlohmann::json config = read_json(config_file);
    for (auto [key, slot] :
         {std::pair{"bos_token", &tok->bos_id_}, std::pair{"eos_token", &tok->eos_id_}}) {
      if (!config.contains(key) || config[key].is_null()) continue;
      const auto text = token_text(config[key]);
      if (!text) fail(config_file, std::string(key) + ": expected a string or {\"content\": ...}");
      const auto id = tok->token_id(*text);
      if (!id) fail(config_file, std::string(key) + " \"" + *text + "\" is not a token");
      *slot = *id;
    }
  }
  return tok;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && (special_flags_[id] & 2);
}

bool Tokenizer::is_added(int32_t id) const {
  return id >= 0 && id < vocab_size() && (special_flags_[id] & 1);
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token_text) const {
  auto it = std::lower_bound(added_.begin(), added_.end(), token_text,
                             [](const AddedToken& a, std::string_view t) { return a.content < t; });
  if (it != added_.end() && it->content == token_text) return it->id;
  auto v = bytes_to_id_.find(std::string(token_text));
  if (v != bytes_to_id_.end()) return v->second;
  return std::nullopt;
}

const Tokenizer::AddedToken* Tokenizer::match_added(std::string_view text, size_t pos) const {
  if (!added_first_byte_[static_cast<unsigned char>(text[pos])]) return nullptr;
  const std::string_view rest = text.substr(pos);
  // Candidates share rest's first byte; the longest one that is a prefix of rest wins.
  auto it = std::lower_bound(added_.begin(), added_.end(), rest.substr(0, 1),
                             [](const AddedToken& a, std::string_view t) { return a.content < t; });
  const AddedToken* best = nullptr;
  for (; it != added_.end() && !it->content.empty() && it->content[0] == rest[0]; ++it) {
    if (rest.starts_with(it->content) && (!best || it->content.size() > best->content.size())) {
      best = &*it;
    }
  }
  return best;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (!parse_special) {
    encode_ordinary(text, out);
    return out;
  }
  size_t start = 0;
  for (size_t pos = 0; pos < text.size(); ++pos) {
    const AddedToken* token = match_added(text, pos);
    if (!token) continue;
    encode_ordinary(text.substr(start, pos - start), out);
    out.push_back(token->id);
    pos += token->content.size() - 1;
    start = pos + 1;
  }
  encode_ordinary(text.substr(start), out);
  return out;
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<std::string_view> pieces;
  pretokenize(text, classes_, pieces);
  for (std::string_view piece : pieces) bpe(piece, out);
}

void Tokenizer::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  const size_t n = piece.size();
  if (n == 1) {
    out.push_back(byte_token_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  // Symbols as a linked list; a heap of candidate merges ordered by (rank, position), the
  // order Hugging Face's BPE applies them in. Stale entries are skipped when popped.
  std::vector<int32_t> id(n), next(n), prev(n);
  for (size_t i = 0; i < n; ++i) {
    id[i] = byte_token_[static_cast<unsigned char>(piece[i])];
    next[i] = static_cast<int32_t>(i + 1);
    prev[i] = static_cast<int32_t>(i) - 1;
  }
  next[n - 1] = -1;
  struct Candidate {
    int32_t rank, pos, left, right;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    const uint64_t key =
        (static_cast<uint64_t>(id[pos]) << 32) | static_cast<uint32_t>(id[next[pos]]);
    auto it = merges_.find(key);
    if (it != merges_.end()) heap.push({it->second.rank, pos, id[pos], id[next[pos]]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int32_t right = next[c.pos];
    if (id[c.pos] != c.left || right < 0 || id[right] != c.right) continue;  // stale
    id[c.pos] =
        merges_.at((static_cast<uint64_t>(c.left) << 32) | static_cast<uint32_t>(c.right)).merged;
    id[right] = -1;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(id[i]);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      throw std::out_of_range("decode: token id " + std::to_string(id) +
                              " outside the vocabulary (size " + std::to_string(vocab_size()) +
                              ")");
    }
    if (skip_special && is_special(id)) continue;
    out += token_bytes_[id];
  }
  return out;
}

namespace {

// Whether `partial` (a lead byte and fewer continuation bytes than it needs) can still become
// a valid UTF-8 character (RFC 3629 table of well-formed byte sequences).
bool could_complete(std::string_view partial) {
  const unsigned char lead = static_cast<unsigned char>(partial[0]);
  for (size_t i = 1; i < partial.size(); ++i) {
    const unsigned char b = static_cast<unsigned char>(partial[i]);
    unsigned char lo = 0x80, hi = 0xBF;
    if (i == 1) {
      if (lead == 0xE0) lo = 0xA0;
      if (lead == 0xED) hi = 0x9F;
      if (lead == 0xF0) lo = 0x90;
      if (lead == 0xF4) hi = 0x8F;
    }
    if (b < lo || b > hi) return false;
  }
  return true;
}

}  // namespace

size_t complete_utf8_prefix(std::string_view bytes) {
  // Look at most 3 bytes back for a lead byte whose sequence is not finished yet.
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char b = static_cast<unsigned char>(bytes[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    const size_t need = b >= 0xF0 && b <= 0xF4   ? 4
                        : b >= 0xE0 && b <= 0xEF ? 3
                        : b >= 0xC2 && b <= 0xDF ? 2
                                                 : 1;
    if (need > back && could_complete(bytes.substr(n - back))) return n - back;
    return n;
  }
  return n;
}

StreamingDecoder::StreamingDecoder(std::shared_ptr<const Tokenizer> tokenizer, bool skip_special)
    : tokenizer_(std::move(tokenizer)), skip_special_(skip_special) {}

std::string StreamingDecoder::push(int32_t id) {
  const int32_t one[] = {id};
  pending_ += tokenizer_->decode(one, skip_special_);
  const size_t ready = complete_utf8_prefix(pending_);
  std::string out = pending_.substr(0, ready);
  pending_.erase(0, ready);
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace agentrt::engine
