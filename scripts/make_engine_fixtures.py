#!/usr/bin/env python3
"""Builds the golden fixtures for the native DeepSeek-V4 engine (tests/engine/golden_test.cc).

For each tiny config below: build transformers' DeepseekV4ForCausalLM, randomise EVERY parameter
and buffer (transformers' own init leaves norms at one and sinks, position biases, hc bases,
correction biases and tid2eid at zero, which hides bugs), save_pretrained it (safetensors,
float32), and record reference logits computed in float64 on CPU for
  (a) one prefill without a cache, and
  (b) a chunked schedule through the cache (37,1,1,1,5,13,...).

Output per config, in <out>/<name>/: the checkpoint (config.json + model.safetensors), ids.json,
schedule.json, logits_prefill.bin and logits_chunked.bin (float32 little-endian,
[positions][vocab]), rope.json (transformers' inv_freq per rope type, for the rope unit test),
meta.json (what the config exercises, the top-k margins seen by the indexer).

Usage (on a machine with torch + transformers 5.17; scripts/device_engine.sh does this on the
GPU machine and packs $OUT/golden.tar, which unpacks into tests/engine/fixtures/golden/):
  python3 scripts/make_engine_fixtures.py --out /tmp/golden [--tar /tmp/golden.tar]
"""

import argparse
import json
import math
import os
import sys
import tarfile

import torch
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM


def yarn(factor, original, theta, partial):
    return {"rope_type": "yarn", "rope_theta": theta, "partial_rotary_factor": partial,
            "factor": factor, "original_max_position_embeddings": original,
            "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.0}


def default_rope(theta, partial):
    return {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": partial}


# Each config covers a different corner; together they cover every bullet of the issue.
CONFIGS = {
    # hc_mult 4; all three attention types; YaRN compress rope; hash then top-k MoE.
    "tiny_a": dict(
        seq_len=256, seed=1,
        cfg=dict(vocab_size=512, hidden_size=48, moe_intermediate_size=24, num_hidden_layers=4,
                 num_attention_heads=4, head_dim=32, q_lora_rank=32, num_experts_per_tok=2,
                 n_routed_experts=6, routed_scaling_factor=1.5, rope_theta=10000.0,
                 compress_rope_theta=160000.0, partial_rotary_factor=0.25,
                 layer_types=["sliding_attention", "compressed_sparse_attention",
                              "heavily_compressed_attention", "compressed_sparse_attention"],
                 mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"],
                 compress_rates={"compressed_sparse_attention": 4,
                                 "heavily_compressed_attention": 16},
                 hc_mult=4, hc_sinkhorn_iters=20, swiglu_limit=1.0, sliding_window=16,
                 o_groups=2, o_lora_rank=16, index_n_heads=12, index_head_dim=16,
                 index_topk=8, max_position_embeddings=256),
        rope=lambda c: {"main": default_rope(10000.0, 0.25),
                        "compress": yarn(4.0, 64, 160000.0, 0.25)}),
    # hc_mult 2; CSA first; HCA rate 8; o_groups 1; another YaRN setting.
    "tiny_b": dict(
        seq_len=200, seed=2,
        cfg=dict(vocab_size=600, hidden_size=40, moe_intermediate_size=20, num_hidden_layers=3,
                 num_attention_heads=2, head_dim=16, q_lora_rank=24, num_experts_per_tok=3,
                 n_routed_experts=5, routed_scaling_factor=2.0, rope_theta=10000.0,
                 compress_rope_theta=40000.0, partial_rotary_factor=0.5,
                 layer_types=["compressed_sparse_attention", "heavily_compressed_attention",
                              "sliding_attention"],
                 mlp_layer_types=["hash_moe", "moe", "moe"],
                 compress_rates={"compressed_sparse_attention": 4,
                                 "heavily_compressed_attention": 8},
                 hc_mult=2, hc_sinkhorn_iters=10, swiglu_limit=0.7, sliding_window=24,
                 o_groups=1, o_lora_rank=12, index_n_heads=12, index_head_dim=12,
                 index_topk=5, max_position_embeddings=256),
        rope=lambda c: {"main": default_rope(10000.0, 0.5),
                        "compress": yarn(8.0, 32, 40000.0, 0.5)}),
    # hc_mult 4; CSA rate 2 (many entries, top-k 16 of up to 150); plain compress rope;
    # a hash layer after a top-k layer.
    "tiny_c": dict(
        seq_len=300, seed=3,
        cfg=dict(vocab_size=512, hidden_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                 num_attention_heads=4, head_dim=16, q_lora_rank=16, num_experts_per_tok=4,
                 n_routed_experts=8, routed_scaling_factor=1.0, rope_theta=10000.0,
                 compress_rope_theta=160000.0, partial_rotary_factor=0.5,
                 layer_types=["heavily_compressed_attention", "compressed_sparse_attention",
                              "sliding_attention"],
                 mlp_layer_types=["moe", "hash_moe", "moe"],
                 compress_rates={"compressed_sparse_attention": 2,
                                 "heavily_compressed_attention": 32},
                 hc_mult=4, hc_sinkhorn_iters=20, swiglu_limit=0.8, sliding_window=32,
                 o_groups=2, o_lora_rank=8, index_n_heads=16, index_head_dim=8,
                 index_topk=16, max_position_embeddings=4096),
        rope=lambda c: {"main": default_rope(10000.0, 0.5),
                        "compress": default_rope(160000.0, 0.5)}),
}


def make_schedule(n, gen):
    head = [37, 1, 1, 1, 5, 13, 2, 29, 1, 8, 16, 3]
    sched, total = [], 0
    for c in head:
        if total + c > n:
            break
        sched.append(c)
        total += c
    while total < n:
        c = int(torch.randint(1, 24, (1,), generator=gen))
        if gen is not None and torch.rand(1, generator=gen).item() < 0.3:
            c = 1
        c = min(c, n - total)
        sched.append(c)
        total += c
    return sched


@torch.no_grad()
def randomise(model, cfg, gen):
    """Every parameter and buffer gets a random, well-scaled value."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        leaf = name.split(".")[-1]
        if leaf == "sinks":
            v = randn(*shape) * 0.7
        elif leaf == "position_bias":
            v = randn(*shape) * 0.7
        elif leaf in ("base", "hc_base"):
            v = randn(*shape) * 0.5
        elif leaf in ("scale", "hc_scale"):
            v = 0.5 + torch.rand(*shape, generator=gen)
        elif leaf == "gate_up_proj":  # [E, 2I, H]; scaled up so the swiglu clamps trigger
            v = randn(*shape) * (1.6 / math.sqrt(shape[2]))
        elif leaf == "down_proj" and len(shape) == 3:  # [E, H, I]
            v = randn(*shape) / math.sqrt(shape[2])
        elif len(shape) == 1:  # RMSNorm weights
            v = 1.0 + 0.2 * randn(*shape)
        elif "embed_tokens" in name:
            v = randn(*shape)
        elif leaf in ("fn", "hc_fn"):
            v = randn(*shape) * (2.0 / math.sqrt(shape[1]))
        else:  # linear weights [out, in]
            gain = 1.6 if ("shared_experts" in name and "down" not in name) else 1.0
            v = randn(*shape) * (gain / math.sqrt(shape[-1]))
        p.copy_(v.to(p.dtype))

    n_exp, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    for name, b in model.named_buffers():
        leaf = name.split(".")[-1]
        if leaf == "e_score_correction_bias":
            b.copy_(randn(*b.shape) * 0.3)
        elif leaf == "tid2eid":  # distinct experts per token
            rows = [torch.randperm(n_exp, generator=gen)[:k] for _ in range(b.shape[0])]
            b.copy_(torch.stack(rows).to(b.dtype))


def indexer_margin_hooks(model, seq_len):
    """Records, for every CSA indexer, the smallest gap between the k-th and (k+1)-th valid score
    over all queries of a no-cache prefill: a tiny gap would make the top-k choice depend on
    rounding (float32 vs float64), so the script reseeds if one shows up."""
    margins = []
    handles = []
    for layer in model.model.layers:
        comp = layer.self_attn.compressor
        if comp is None or not hasattr(comp, "indexer"):
            continue
        rate, topk = comp.indexer.compress_rate, comp.indexer.index_topk

        def hook(_mod, _inp, out, rate=rate, topk=topk):
            scores = out[0]  # [S, T]
            if scores.shape[0] != seq_len:
                return
            best = math.inf
            for t in range(scores.shape[0]):
                valid = min((t + 1) // rate, scores.shape[1])
                if valid <= topk:
                    continue
                s = torch.sort(scores[t, :valid].double(), descending=True).values
                gap = (s[topk - 1] - s[topk]).item() / (s.abs().max().item() + 1e-30)
                best = min(best, gap)
            margins.append(best)

        handles.append(comp.indexer.scorer.register_forward_hook(hook))
    return margins, handles


@torch.no_grad()
def build(name, spec, out_dir):
    cfg_kwargs = dict(spec["cfg"])
    seq_len = spec["seq_len"]
    for attempt in range(12):
        seed = spec["seed"] * 1000 + attempt
        gen = torch.Generator().manual_seed(seed)
        config = DeepseekV4Config(**cfg_kwargs, rope_parameters=spec["rope"](cfg_kwargs))
        config._attn_implementation = "eager"
        config._experts_implementation = "eager"
        model = DeepseekV4ForCausalLM(config).eval().to(torch.float32)
        randomise(model, cfg_kwargs, gen)

        ids = torch.randint(0, cfg_kwargs["vocab_size"], (1, seq_len), generator=gen)
        ref = DeepseekV4ForCausalLM(config).eval()
        ref.load_state_dict(model.state_dict())
        ref = ref.to(torch.float64)
        # The rope tables must stay what transformers computed (a buffer cast is harmless: the
        # forward casts inv_freq to float32).
        margins, handles = indexer_margin_hooks(ref, seq_len)
        clamp = []
        for layer in ref.model.layers:
            def on_gate(_m, _i, out, limit=cfg_kwargs["swiglu_limit"]):
                clamp.append((out > limit).double().mean().item())
            handles.append(layer.mlp.shared_experts.gate_proj.register_forward_hook(on_gate))
        prefill = ref(input_ids=ids, use_cache=False).logits[0]
        for h in handles:
            h.remove()
        min_margin = min(margins) if margins else math.inf
        if min_margin < 2e-5:
            print(f"{name}: seed {seed} has top-k margin {min_margin:.2e}, reseeding", flush=True)
            continue
        break
    else:
        raise RuntimeError(f"{name}: no seed with a safe top-k margin")

    schedule = make_schedule(seq_len, gen)
    assert sum(schedule) == seq_len
    rows, cache, pos = [], None, 0
    for c in schedule:
        out = ref(input_ids=ids[:, pos:pos + c], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        rows.append(out.logits[0])
        pos += c
    chunked = torch.cat(rows, 0)
    diff = ((chunked - prefill).norm(dim=-1) / prefill.norm(dim=-1)).max().item()
    print(f"{name}: seed {seed}, chunked vs prefill max rel L2 (float64) = {diff:.3e}, "
          f"min top-k margin {min_margin:.3e}", flush=True)
    # transformers runs RMSNorm, the hyper-connection weights and the indexer scores in float32
    # even in a float64 model, so its two paths agree to ~1e-7, not to float64 precision.
    if diff > 1e-5:
        raise RuntimeError(f"{name}: transformers' chunked path disagrees with its prefill ({diff})")

    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    gen = os.path.join(d, "generation_config.json")  # not needed by the engine or the tests
    if os.path.exists(gen):
        os.remove(gen)
    # The checkpoint must reload into the same model.
    back = DeepseekV4ForCausalLM.from_pretrained(d, dtype=torch.float32).eval().to(torch.float64)
    back.config._attn_implementation = "eager"
    back.config._experts_implementation = "eager"
    again = back(input_ids=ids, use_cache=False).logits[0]
    rt = ((again - prefill).norm(dim=-1) / prefill.norm(dim=-1)).max().item()
    print(f"{name}: save_pretrained round trip rel L2 = {rt:.3e}", flush=True)
    if rt > 1e-5:
        raise RuntimeError(f"{name}: save_pretrained round trip differs ({rt})")

    with open(os.path.join(d, "ids.json"), "w") as f:
        json.dump(ids[0].tolist(), f)
    with open(os.path.join(d, "schedule.json"), "w") as f:
        json.dump(schedule, f)
    prefill.to(torch.float32).numpy().astype("<f4").tofile(os.path.join(d, "logits_prefill.bin"))
    chunked.to(torch.float32).numpy().astype("<f4").tofile(os.path.join(d, "logits_chunked.bin"))
    rot = model.model.rotary_emb
    rope = {t: {"inv_freq": getattr(rot, f"{t}_inv_freq").float().tolist(),
                "attention_scaling": float(getattr(rot, f"{t}_attention_scaling"))}
            for t in rot.layer_types}
    with open(os.path.join(d, "rope.json"), "w") as f:
        json.dump(rope, f)
    # Swiglu clamp coverage: fraction of shared-expert gate pre-activations above the limit.
    meta = {"shared_gate_clamped_fraction": clamp, "seed": seed, "seq_len": seq_len, "vocab_size": cfg_kwargs["vocab_size"],
            "min_topk_margin": min_margin, "chunked_vs_prefill_f64": diff,
            "transformers_rope_parameters": config.rope_parameters}
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    for fn in sorted(os.listdir(d)):
        print(f"  {name}/{fn}: {os.path.getsize(os.path.join(d, fn))} bytes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tar", help="also pack the fixtures into this tar file")
    ap.add_argument("--only", nargs="*", help="config names to build")
    args = ap.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    os.makedirs(args.out, exist_ok=True)
    failed = False
    for name, spec in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        try:
            build(name, spec, args.out)
        except Exception as e:  # report and go on: the other configs are still useful
            print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
            failed = True
    if args.tar:
        with tarfile.open(args.tar, "w") as tf:
            for name in CONFIGS:
                p = os.path.join(args.out, name)
                if os.path.isdir(p):
                    tf.add(p, arcname=name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
