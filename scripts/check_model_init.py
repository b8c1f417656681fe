#!/usr/bin/env python3
"""Loads a checkpoint written by `agentrt model init` with transformers' DeepseekV4ForCausalLM and
writes the logits of a token sequence (float32 little-endian rows), so they can be compared with
`agentrt logits` on the same checkpoint. Run where transformers 5.17 is (the GPU machine):
  python3 scripts/check_model_init.py MODEL_DIR IDS_JSON OUT_BIN
"""
import json
import sys

import torch
from transformers import AutoConfig, DeepseekV4ForCausalLM

model_dir, ids_file, out_file = sys.argv[1:4]
cfg = AutoConfig.from_pretrained(model_dir)
cfg._attn_implementation = "eager"
cfg._experts_implementation = "eager"  # the grouped-mm kernel has no float64 path
model = DeepseekV4ForCausalLM.from_pretrained(model_dir, config=cfg, dtype=torch.float32).eval().to(torch.float64)
ids = torch.tensor([json.load(open(ids_file))])
with torch.no_grad():
    logits = model(input_ids=ids, use_cache=False).logits[0].to(torch.float32)
logits.numpy().tofile(out_file)
print("loaded", type(model).__name__, "layers", cfg.num_hidden_layers, "logits", tuple(logits.shape), "finite", bool(torch.isfinite(logits).all()))
