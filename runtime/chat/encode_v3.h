// The DeepSeek-V3 chat format (<｜tool▁calls▁begin｜>... tool calls, <｜tool▁outputs▁begin｜>...
// results), exactly as the V3 tokenizer's chat_template renders it, quirks included (the
// template closes the calls block only after a second call, and never resets its first-call
// flag). Golden-tested against jinja2 rendering of that template.
#pragma once

#include <span>
#include <string>

#include "runtime/chat/messages.h"

namespace agentrt::chat {

struct EncodeV3Options {
  bool add_generation_prompt = true;
  bool add_bos = true;
};

std::string encode_v3(std::span<const Message> messages, const EncodeV3Options& options = {});

}  // namespace agentrt::chat
