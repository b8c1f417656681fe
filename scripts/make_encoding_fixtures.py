#!/usr/bin/env python3
"""Golden prompts for the DeepSeek-V4 chat encoder tests, rendered by DeepSeek's own
encoding/encoding_dsv4.py (pure Python; pass its path, it is not part of this repository):

  python3 scripts/make_encoding_fixtures.py PATH/TO/encoding_dsv4.py tests/runtime/fixtures/encoding/cases.json
"""
import importlib.util
import json
import sys

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. 東京"},
                                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                          "required": ["city"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "description": "Search the web",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                                                          "filters": {"type": "object", "properties": {"site": {"type": "string"}, "after": {"type": "string", "format": "date"}}},
                                                          "tags": {"type": "array", "items": {"type": "string"}}, "ratio": {"type": "number", "default": 0.5}},
                         "required": ["query"]}}}
NOARGS = {"type": "function", "function": {"name": "now", "description": "Current time", "parameters": {"type": "object", "properties": {}}}}


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


def cases():
    sys_tools = {"role": "system", "content": "You are a helpful assistant.", "tools": [WEATHER, SEARCH]}
    out = []
    add = lambda name, messages, **kw: out.append({"name": name, "messages": messages, **kw})
    add("single_user", [{"role": "user", "content": "Hello!"}])
    add("system_user", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    add("empty_system", [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}])
    add("multi_turn", [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "times 3?"}])
    add("thinking_single", [{"role": "user", "content": "Think about it."}], thinking_mode="thinking")
    add("thinking_multi_drop", [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                                {"role": "user", "content": "Q2"}], thinking_mode="thinking")
    add("thinking_multi_keep", [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                                {"role": "user", "content": "Q2"}], thinking_mode="thinking", drop_thinking=False)
    add("effort_max", [{"role": "user", "content": "Prove it."}], thinking_mode="thinking", reasoning_effort="max")
    add("effort_high", [{"role": "system", "content": "S"}, {"role": "user", "content": "Prove it."}], thinking_mode="thinking", reasoning_effort="high")
    add("effort_max_chat", [{"role": "user", "content": "x"}], thinking_mode="chat", reasoning_effort="max")
    add("tools_system", [sys_tools, {"role": "user", "content": "Weather in Paris?"}])
    add("tools_call_string", [sys_tools, {"role": "user", "content": "Weather in Paris?"},
                              {"role": "assistant", "content": "", "tool_calls": [call("c1", "get_weather", {"city": "Paris"})]}])
    add("tools_call_result", [sys_tools, {"role": "user", "content": "Weather in Paris?"},
                              {"role": "assistant", "content": "Let me check.", "tool_calls": [call("c1", "get_weather", {"city": "Paris", "unit": "celsius"})]},
                              {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21}"}])
    add("tools_parallel_results_reordered", [sys_tools, {"role": "user", "content": "Paris and Tokyo?"},
                              {"role": "assistant", "content": "", "tool_calls": [call("a", "get_weather", {"city": "Paris"}), call("b", "get_weather", {"city": "東京"})]},
                              {"role": "tool", "tool_call_id": "b", "content": "Tokyo: 18C"}, {"role": "tool", "tool_call_id": "a", "content": "Paris: 21C"},
                              {"role": "assistant", "content": "Paris 21C, Tokyo 18C."}, {"role": "user", "content": "Thanks"}])
    add("tools_nonstring_args", [sys_tools, {"role": "user", "content": "search"},
                              {"role": "assistant", "content": "", "tool_calls": [call("s", "search", {"query": "a \"quoted\" <tag>\nline", "limit": 5, "filters": {"site": "x.org", "after": "2024-01-01"}, "tags": ["α", "b"], "ratio": 0.25, "flag": True, "none": None})]},
                              {"role": "tool", "tool_call_id": "s", "content": "[]"}])
    add("tools_thinking", [sys_tools, {"role": "user", "content": "Weather?"},
                           {"role": "assistant", "content": "", "reasoning_content": "Need a tool.", "tool_calls": [call("c1", "get_weather", {"city": "Oslo"})]},
                           {"role": "tool", "tool_call_id": "c1", "content": "cold"}], thinking_mode="thinking")
    add("tools_thinking_history", [sys_tools, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                                   {"role": "user", "content": "Q2"}], thinking_mode="thinking")
    add("no_args_tool", [{"role": "system", "content": "", "tools": [NOARGS]}, {"role": "user", "content": "time?"},
                         {"role": "assistant", "content": "", "tool_calls": [call("t", "now", {})]}, {"role": "tool", "tool_call_id": "t", "content": "12:00"}])
    add("developer", [{"role": "developer", "content": "Dev instructions", "tools": [NOARGS]}, {"role": "user", "content": "go"}])
    add("developer_last", [{"role": "system", "content": "S"}, {"role": "developer", "content": "Only dev"}])
    add("response_format", [{"role": "system", "content": "Reply in JSON.", "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}}},
                            {"role": "user", "content": "Answer"}])
    add("unicode_content", [{"role": "user", "content": "こんにちは 🤖 é\u0301 \u2028 tabs\tand\nnewlines"}])
    add("assistant_last_no_gen", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    add("no_bos", [{"role": "user", "content": "Hi"}], add_default_bos_token=False)
    add("consecutive_users", [{"role": "user", "content": "part 1"}, {"role": "user", "content": "part 2"}])
    add("tool_then_user_text", [sys_tools, {"role": "user", "content": "w?"},
                                {"role": "assistant", "content": "", "tool_calls": [call("c1", "get_weather", {"city": "Rome"})]},
                                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}, {"role": "user", "content": "and tomorrow?"}])
    add("wo_eos", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "partial", "wo_eos": True}])
    add("task_query", [{"role": "user", "content": "classify this", "task": "query"}])
    add("task_action_thinking", [{"role": "user", "content": "do", "task": "action"}], thinking_mode="thinking")
    add("context_prefix", [{"role": "user", "content": "next"}], context=[{"role": "user", "content": "before"}, {"role": "assistant", "content": "ok"}])
    return out


def main():
    spec = importlib.util.spec_from_file_location("encoding_dsv4", sys.argv[1])
    enc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(enc)
    result = []
    for case in cases():
        kwargs = dict(thinking_mode=case.get("thinking_mode", "chat"), drop_thinking=case.get("drop_thinking", True),
                      add_default_bos_token=case.get("add_default_bos_token", True), reasoning_effort=case.get("reasoning_effort"))
        if "context" in case:
            kwargs["context"] = case["context"]
        case["expected"] = enc.encode_messages(case["messages"], **kwargs)
        result.append(case)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump({"reference": "DeepSeek encoding/encoding_dsv4.py", "cases": result}, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(result)} cases")


if __name__ == "__main__":
    main()
