// Transcripts as JSON Lines, written as things happen and flushed line by line, so a crash
// mid-step leaves a file that resumes: {"type":"session"}, {"type":"message"} for every message
// appended to the conversation, {"type":"tool_result"} records, {"type":"turn_end"}.
#pragma once

#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/chat/messages.h"

namespace agentrt {

class TranscriptWriter {
 public:
  // Appends to `path` (created with its folders). Throws naming the path if it cannot.
  explicit TranscriptWriter(const std::filesystem::path& path);
  ~TranscriptWriter();
  void write(const nlohmann::json& record);  // one line, flushed
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
  std::mutex mutex_;
};

struct LoadedTranscript {
  std::string session_id;
  std::vector<chat::Message> messages;
  // Tool calls of the last assistant message that never got a result (a crash mid-step).
  std::vector<chat::ToolCall> unanswered_calls;
};

// Throws naming the file and line of a malformed record; a truncated last line (the crash
// case) is ignored.
LoadedTranscript load_transcript(const std::filesystem::path& path);

}  // namespace agentrt
