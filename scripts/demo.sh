#!/usr/bin/env bash
# The main job on the embedded default: sets up, builds agentrt, makes a tiny random-weight
# DeepSeek-V4 model if there is none, and runs the example agent workflow on the native engine.
# (A random model writes gibberish, but its tool calls are schema-valid by construction, run in
# the sandbox, and their results go back to it; see examples/hello_tools.yaml.)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
build="${AGENTRT_BUILD_DIR:-build}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target agentrt
home="${AGENTRT_HOME:-$repo/build/agentrt-home}"
model="$home/models/tiny-v4"
if [[ ! -f "$model/model.safetensors" ]]; then
  "$build/agentrt" model init --preset tiny --vocab-from "$home/models/deepseek-v3-tokenizer" --out "$model" --seed 1
fi
mkdir -p build/demo-workspace
[[ -f build/demo-workspace/notes.txt ]] || echo "Remember: the demo runs a random-weight model." > build/demo-workspace/notes.txt
# Exit status 1 only means a step ended on a budget rather than a final answer, which is what a
# random model does; errors in agentrt itself exit 2.
status=0
"$build/agentrt" run examples/hello_tools.yaml --model "$model" || status=$?
if [[ $status -gt 1 ]]; then exit "$status"; fi
echo "demo finished; transcript in build/demo-workspace/transcript.jsonl"
