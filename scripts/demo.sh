#!/usr/bin/env bash
# The main job on the embedded default: sets up, builds agentrt, and runs the
# example workflow with the native engine on a local model.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
build="${AGENTRT_BUILD_DIR:-build}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target agentrt
echo "hello from agentrt" | "$build/agentrt" tokenize
