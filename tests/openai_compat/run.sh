#!/usr/bin/env bash
# Starts `agentrt serve` on a tiny random V4 model (127.0.0.1, a free port) and runs the official
# openai npm client against it. Skips (exit 77) when node or the package is missing.
set -euo pipefail
agentrt="$1"; src="$2"; home="$3"
node_modules="$src/build/node/node_modules"
if ! command -v node >/dev/null || [[ ! -d "$node_modules/openai" ]]; then
  echo "SKIP: node or the openai npm package is missing (scripts/setup.sh installs it)"; exit 77
fi
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$agentrt" model init --preset tiny --vocab-from "$home/models/deepseek-v3-tokenizer" --out "$work/model" --seed 2 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo "testkey" > "$work/keys"
"$agentrt" serve --host 127.0.0.1 --port "$port" --model "$work/model" --api-keys "$work/keys" --workspace "$work/ws" 2>"$work/server.log" &
server=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
cp "$src/tests/openai_compat/client.mjs" "$src/build/node/client.mjs"
node "$src/build/node/client.mjs" "http://127.0.0.1:$port/v1" testkey
kill -TERM "$server"
wait "$server"
echo "server exited cleanly on SIGTERM"
