#!/usr/bin/env python3
"""A small MCP server over stdio for the client tests: paginated tools/list, and tools that
echo, add, report isError, crash, hang, or answer with garbage."""
import json
import sys
import time

TOOLS = [
    {"name": "echo", "description": "echo text", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"name": "add", "description": "a+b", "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}},
    {"name": "fail", "description": "always an error", "inputSchema": {"type": "object"}},
    {"name": "crash", "description": "exits", "inputSchema": {"type": "object"}},
    {"name": "hang", "description": "never answers", "inputSchema": {"type": "object"}},
    {"name": "garbage", "description": "malformed reply", "inputSchema": {"type": "object"}},
]


def reply(id_, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": id_, "result": result}) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    msg = json.loads(line)
    method, id_ = msg.get("method"), msg.get("id")
    if method == "initialize":
        reply(id_, {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "test", "version": "1"}})
    elif method == "tools/list":
        start = int(msg.get("params", {}).get("cursor") or 0)
        page = TOOLS[start:start + 2]
        result = {"tools": page}
        if start + 2 < len(TOOLS):
            result["nextCursor"] = str(start + 2)
        reply(id_, result)
    elif method == "tools/call":
        name, args = msg["params"]["name"], msg["params"].get("arguments", {})
        if name == "echo":
            reply(id_, {"content": [{"type": "text", "text": args["text"]}]})
        elif name == "add":
            reply(id_, {"content": [{"type": "text", "text": str(args["a"] + args["b"])}], "structuredContent": {"sum": args["a"] + args["b"]}})
        elif name == "fail":
            reply(id_, {"content": [{"type": "text", "text": "it failed"}], "isError": True})
        elif name == "crash":
            sys.exit(3)
        elif name == "hang":
            time.sleep(3600)
        elif name == "garbage":
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
