#!/usr/bin/env python3
"""transformers' DeepseekV4ForCausalLM (eager attention and experts, bf16) on the checkpoint that
bench_engine_cuda measures, for the same measurements: prefill and batch-1 decode tokens/s at
each context, batched decode, peak GPU memory. The FP8 / MXFP4 weights are dequantised to bf16
on the GPU and copied into the model by name (transformers does not read them natively); the
script says how many parameters it matched. Runs where out-of-memory is expected say so.

  python3 scripts/bench_transformers_v4.py MODEL_DIR [--contexts 1024,16384,65536] [--steps 8]
                                           [--batches 8,32,64] [--batch-context 1024]
                                           [--budget-s 300]
"""
import argparse
import json
import os
import time

import torch
from safetensors import safe_open
from transformers import AutoConfig, DeepseekV4ForCausalLM

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def e8m0(t):
    return torch.exp2(t.view(torch.uint8).float() - 127.0)


def dequantise(f, name, keys):
    t = f.get_tensor(name).cuda()
    base = name[: -len(".weight")] if name.endswith(".weight") else None
    scale = base + ".scale" if base else None
    if scale and scale in keys:
        s = f.get_tensor(scale).cuda()
        s = e8m0(s) if s.dtype in (torch.float8_e8m0fnu, torch.uint8) else s.float()
        if t.dtype == torch.float8_e4m3fn:
            rows, cols = t.shape
            full = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:rows, :cols]
            return (t.float() * full).to(torch.bfloat16)
        table = torch.tensor(E2M1, device="cuda")
        b = t.view(torch.uint8)
        vals = torch.stack([table[(b & 15).long()], table[(b >> 4).long()]], dim=-1)
        vals = vals.view(b.shape[0], -1)
        return (vals * s.repeat_interleave(32, 1)).to(torch.bfloat16)
    return t


def tokens(name):
    return set(name.replace("_", ".").split("."))


def layer_of(name):
    parts = name.split(".")
    return parts[parts.index("layers") + 1] if "layers" in parts else None


def match_names(params, model_dir):
    """Copies checkpoint tensors into transformers' parameters. transformers renames the upstream
    names when it loads (q_a_proj for wq_a, fused expert tensors, ...); we match by name, else by
    layer + shape with the most shared name tokens, and stack routed experts into fused tensors."""
    copied = set()
    with safe_open(os.path.join(model_dir, "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        sources = [k for k in keys if not (k.endswith(".scale") and k[:-6] + ".weight" in keys)]
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in sources}
        for k in sources:  # FP4 stores [rows][cols/2]
            if k in keys and k[:-7] + ".scale" in keys and f.get_slice(k).get_dtype() in ("I8", "U8"):
                shapes[k] = (shapes[k][0], shapes[k][1] * 2)
        used = set()
        for name, p in params.items():
            target = tuple(p.shape)
            if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                prefix = name[: -len("gate_up_proj")] if name.endswith("gate_up_proj") else name[: -len("down_proj")]
                src_prefix = prefix.replace(".mlp.", ".ffn.")
                E = target[0]
                mats = []
                for e in range(E):
                    ws = ["w1", "w3"] if name.endswith("gate_up_proj") else ["w2"]
                    parts = [dequantise(f, f"{src_prefix}{e}.{w}.weight", keys) for w in ws]
                    m = torch.cat(parts, 0)
                    if tuple(m.shape) != target[1:]:
                        m = m.t()
                    mats.append(m)
                with torch.no_grad():
                    p.copy_(torch.stack(mats).to(p.dtype).view(target))
                copied.add(name)
                continue
            cand = name if name in shapes else None
            if cand is None:
                best = None
                for k in sources:
                    if k in used or layer_of(k) != layer_of(name) or shapes[k] != target:
                        continue
                    score = len(tokens(k) & tokens(name))
                    if best is None or score > best[0]:
                        best = (score, k)
                cand = best[1] if best else None
            if cand is None:
                continue
            w = dequantise(f, cand, keys)
            with torch.no_grad():
                p.copy_(w.view(target).to(p.dtype))
            used.add(cand)
            copied.add(name)
    return used, copied


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--contexts", default="1024,16384,65536")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batches", default="8,32,64")
    ap.add_argument("--batch-context", type=int, default=1024)
    ap.add_argument("--budget-s", type=float, default=300)
    a = ap.parse_args()
    start = time.time()
    print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__}")
    cfg = AutoConfig.from_pretrained(a.model)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    torch.set_default_dtype(torch.bfloat16)
    t0 = time.time()
    with torch.device("cuda"):
        model = DeepseekV4ForCausalLM(cfg).eval()
    params = dict(model.named_parameters())
    matched, copied = match_names(params, a.model)
    print(f"load: {time.time() - t0:.1f} s; {len(copied)} of {len(params)} parameters "
          f"({sum(params[n].numel() for n in copied) / 1e9:.2f} of "
          f"{sum(p.numel() for p in params.values()) / 1e9:.2f} G values) hold the checkpoint's "
          f"weights; the rest stay random: {[n for n in params if n not in copied][:6]}")
    torch.cuda.synchronize()
    V = cfg.vocab_size
    gen = torch.Generator(device="cuda").manual_seed(1)

    def ids(b, n):
        return torch.randint(0, V, (b, n), device="cuda", generator=gen)

    def timed(fn):
        torch.cuda.synchronize()
        t = time.time()
        out = fn()
        torch.cuda.synchronize()
        return out, time.time() - t

    print(f"\n{'transformers measurement':<28} {'tokens/s':>12}")
    with torch.no_grad():
        for ctx in [int(x) for x in a.contexts.split(",")]:
            if time.time() - start > a.budget_s:
                print(f"{'prefill ' + str(ctx):<28} {'skipped (time budget)':>12}")
                continue
            try:
                out, dt = timed(lambda: model(input_ids=ids(1, ctx), use_cache=True))
                print(f"{'prefill ' + str(ctx):<28} {ctx / dt:12.1f}", flush=True)
                pkv = out.past_key_values
                nxt = ids(1, 1)
                out = model(input_ids=nxt, past_key_values=pkv, use_cache=True)
                pkv = out.past_key_values

                def steps():
                    p = pkv
                    for _ in range(a.steps):
                        p = model(input_ids=ids(1, 1), past_key_values=p,
                                  use_cache=True).past_key_values
                    return p

                _, dt = timed(steps)
                print(f"{'decode @ ' + str(ctx):<28} {a.steps / dt:12.2f}", flush=True)
                del out, pkv
            except torch.OutOfMemoryError:
                print(f"{'prefill/decode @ ' + str(ctx):<28} {'out of memory':>12}", flush=True)
            torch.cuda.empty_cache()
        for b in [int(x) for x in a.batches.split(",")]:
            if time.time() - start > a.budget_s:
                print(f"{'decode batch ' + str(b):<28} {'skipped (time budget)':>12}")
                continue
            try:
                out = model(input_ids=ids(b, a.batch_context), use_cache=True)
                pkv = out.past_key_values

                def bsteps():
                    p = pkv
                    for _ in range(max(2, a.steps // 2)):
                        p = model(input_ids=ids(b, 1), past_key_values=p,
                                  use_cache=True).past_key_values
                    return p

                _, dt = timed(bsteps)
                label = f"decode batch {b} @ {a.batch_context}"
                print(f"{label:<28} {b * max(2, a.steps // 2) / dt:12.1f}", flush=True)
                del out, pkv
            except torch.OutOfMemoryError:
                print(f"{'decode batch ' + str(b):<28} {'out of memory':>12}", flush=True)
            torch.cuda.empty_cache()
    print(f"\ntransformers peak GPU memory allocated: "
          f"{torch.cuda.max_memory_allocated() / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
