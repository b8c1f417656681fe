#!/usr/bin/env python3
"""Golden prompts for the DeepSeek-V3 chat format: the V3 tokenizer's own chat_template rendered
with jinja2.  python3 scripts/make_v3_encoding_fixtures.py TOKENIZER_CONFIG_JSON OUT_JSON"""
import json
import sys

import jinja2

config = json.load(open(sys.argv[1]))
template = jinja2.Environment().from_string(config["chat_template"])


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


cases = [
    ("single", [{"role": "user", "content": "Hi"}]),
    ("system_multi", [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, {"role": "user", "content": "q"},
                      {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]),
    ("one_call_result", [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [call("c", "get_weather", {"city": "Paris"})]},
                         {"role": "tool", "tool_call_id": "c", "content": "21C"}, {"role": "assistant", "content": "It is 21C."}]),
    ("two_calls_two_results", [{"role": "user", "content": "both?"},
                               {"role": "assistant", "content": None, "tool_calls": [call("a", "f", {"x": 1}), call("b", "g", {"y": "z"})]},
                               {"role": "tool", "tool_call_id": "a", "content": "1"}, {"role": "tool", "tool_call_id": "b", "content": "2"}]),
    ("unicode", [{"role": "user", "content": "こんにちは 🤖"}]),
]
out = []
for name, messages in cases:
    for gen in (True, False):
        out.append({"name": name, "add_generation_prompt": gen, "messages": messages,
                    "expected": template.render(messages=messages, add_generation_prompt=gen, bos_token="<｜begin▁of▁sentence｜>")})
json.dump({"reference": "DeepSeek-V3 tokenizer_config.json chat_template (jinja2)", "cases": out}, open(sys.argv[2], "w"), ensure_ascii=False, indent=1)
print(f"wrote {len(out)} cases")
