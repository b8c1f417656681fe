#!/usr/bin/env bash
# What engine part B runs on the GPU machine (torch + transformers 5.17 there, no internet):
#   1. the golden fixtures (scripts/make_engine_fixtures.py, float64 on the CPU), packed into
#      $OUT/golden.tar (unpack into tests/engine/fixtures/golden/);
#   2. if a checkpoint written by `agentrt model init` was carried in CHECK_CKPT (a folder), a
#      transformers from_pretrained + forward of it, to check our writer's format.
set -euo pipefail
OUT=${OUT:?set OUT}
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 scripts/make_engine_fixtures.py --out /tmp/golden --tar "$OUT/golden.tar" "$@" 2>&1 | tee "$OUT/fixtures.log" || true
if [[ -n "${CHECK_CKPT:-}" && -d "${CHECK_CKPT}" ]]; then
  python3 - "$CHECK_CKPT" <<'PY' 2>&1 | tee "$OUT/model_init_check.log"
import sys, torch
from transformers import AutoConfig, DeepseekV4ForCausalLM
d = sys.argv[1]
cfg = AutoConfig.from_pretrained(d)
print("config:", type(cfg).__name__, "layers", cfg.num_hidden_layers, "hidden", cfg.hidden_size)
m = DeepseekV4ForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
ids = torch.randint(0, cfg.vocab_size, (1, 24))
with torch.no_grad():
    logits = m(input_ids=ids, use_cache=False).logits
print("forward ok:", tuple(logits.shape), "finite:", bool(torch.isfinite(logits).all()))
PY
fi
