#include "runtime/transcript.h"

#include <unistd.h>

#include <fstream>
#include <stdexcept>

namespace agentrt {

TranscriptWriter::TranscriptWriter(const std::filesystem::path& path) : path_(path) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  file_ = std::fopen(path.c_str(), "a+");
  if (!file_) throw std::runtime_error(path.string() + ": cannot open transcript for writing");
  // A torn last line (crash mid-write) must not swallow the next record.
  if (std::fseek(file_, -1, SEEK_END) == 0 && std::fgetc(file_) != '\n') std::fputc('\n', file_);
  std::fseek(file_, 0, SEEK_END);
}

TranscriptWriter::~TranscriptWriter() {
  if (file_) std::fclose(file_);
}

void TranscriptWriter::write(const nlohmann::json& record) {
  const std::string line =
      record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard lock(mutex_);
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    throw std::runtime_error(path_.string() + ": transcript write failed (disk full?)");
  }
  ::fdatasync(::fileno(file_));
}

LoadedTranscript load_transcript(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot open transcript");
  LoadedTranscript out;
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(lines[i]);
    } catch (const nlohmann::json::exception& e) {
      if (i + 1 == lines.size()) break;  // torn last line from a crash
      throw std::runtime_error(path.string() + ":" + std::to_string(i + 1) +
                               ": malformed transcript record: " + e.what());
    }
    const std::string type = record.value("type", "");
    if (type == "session") {
      out.session_id = record.value("id", "");
    } else if (type == "message") {
      try {
        out.messages.push_back(chat::parse_message(record.at("message"), out.messages.size()));
      } catch (const std::exception& e) {
        throw std::runtime_error(path.string() + ":" + std::to_string(i + 1) + ": " + e.what());
      }
    }
  }
  // Calls of the last assistant turn that have no tool message after them.
  for (size_t i = out.messages.size(); i-- > 0;) {
    const auto& m = out.messages[i];
    if (m.role != chat::Message::Role::assistant) continue;
    for (const auto& call : m.tool_calls) {
      bool answered = false;
      for (size_t j = i + 1; j < out.messages.size(); ++j) {
        answered = answered || (out.messages[j].role == chat::Message::Role::tool &&
                                out.messages[j].tool_call_id == call.id);
      }
      if (!answered) out.unanswered_calls.push_back(call);
    }
    break;
  }
  return out;
}

}  // namespace agentrt
