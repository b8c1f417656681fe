#!/usr/bin/env python3
"""Writes a DeepSeek-V4-Flash-shaped checkpoint with random weights, fast, with torch on the GPU:
the real per-layer shapes (hidden 4096, 64 heads of 512, q_lora 1024, o_groups 8 x o_lora 1024,
256 routed experts of 2048 with 6 active + 1 shared, indexer 64 x 128, vocab 129280) but only
--layers layers (sliding, CSA, HCA, CSA, ...), in the native precisions: FP8 e4m3 block-scaled
(ue8m0, 128x128) linears, MXFP4 routed experts (E2M1, ue8m0 per 32 columns), bf16 embedding and
head, float32 norms / mHC / sinks. Same names and layout as engine/model_init.cc writes (which
both our engine and transformers read). Used by scripts/device_cuda.sh for bench_engine_cuda.

  python3 scripts/make_v4_flash_checkpoint.py --out DIR [--layers 4] [--experts-dtype fp4|fp8]
"""
import argparse
import json
import math
import os
import time

import torch
from safetensors.torch import save_file

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def config(layers, experts_dtype):
    kinds = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
             "compressed_sparse_attention"]
    layer_types = [kinds[i % 4] if i < 4 else kinds[1 + (i % 2)] for i in range(layers)]
    return {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
        "vocab_size": 129280, "hidden_size": 4096, "num_hidden_layers": layers,
        "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512,
        "qk_rope_head_dim": 64, "partial_rotary_factor": 0.125, "q_lora_rank": 1024,
        "o_groups": 8, "o_lora_rank": 1024, "sliding_window": 128,
        "layer_types": layer_types,
        "mlp_layer_types": ["hash_moe" if i < min(3, layers - 1) else "moe" for i in range(layers)],
        "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
        "compress_rope_theta": 160000.0, "rope_theta": 10000.0,
        "rope_parameters": {
            "main": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.125},
            "compress": {"rope_type": "yarn", "rope_theta": 160000.0, "factor": 16.0,
                         "original_max_position_embeddings": 65536, "beta_fast": 32.0,
                         "beta_slow": 1.0, "attention_factor": 1.0,
                         "partial_rotary_factor": 0.125}},
        "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
        "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
        "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 6,
        "moe_intermediate_size": 2048, "norm_topk_prob": True, "routed_scaling_factor": 1.5,
        "scoring_func": "sqrtsoftplus", "swiglu_limit": 10.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 1048576, "num_nextn_predict_layers": 0,
        "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "bos_token_id": 0,
        "eos_token_id": 1, "dtype": "bfloat16", "expert_dtype": experts_dtype,
    }


class Writer:
    def __init__(self, seed):
        self.g = torch.Generator(device="cuda").manual_seed(seed)
        self.t = {}

    def randn(self, shape, std=1.0, mean=0.0):
        return torch.randn(shape, generator=self.g, device="cuda") * std + mean

    def f32(self, name, shape, mean, std):
        self.t[name] = self.randn(shape, std, mean).cpu()

    def bf16(self, name, rows, cols):
        self.t[name] = self.randn((rows, cols), 1 / math.sqrt(cols)).to(torch.bfloat16).cpu()

    def fp8(self, name, rows, cols):
        x = self.randn((rows, cols), 1 / math.sqrt(cols))
        rb, cb = (rows + 127) // 128, (cols + 127) // 128
        pad = torch.zeros((rb * 128, cb * 128), device="cuda")
        pad[:rows, :cols] = x
        blocks = pad.view(rb, 128, cb, 128).abs().amax(dim=(1, 3)).clamp_min(1e-30)
        e = torch.ceil(torch.log2(blocks / 448.0)).clamp(-127, 127)
        scale = torch.exp2(e)
        full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:rows, :cols]
        q = (x / full).clamp(-448, 448).to(torch.float8_e4m3fn)
        base = name[: -len(".weight")]
        self.t[name] = q.cpu()
        self.t[base + ".scale"] = (e + 127).to(torch.uint8).view(torch.float8_e8m0fnu).cpu()

    def fp4(self, name, rows, cols):
        x = self.randn((rows, cols), 1 / math.sqrt(cols)).view(rows, cols // 32, 32)
        amax = x.abs().amax(dim=2, keepdim=True).clamp_min(1e-30)
        e = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
        v = (x / torch.exp2(e)).view(rows, cols)
        table = E2M1.to("cuda")
        code = (v.abs().unsqueeze(-1) - table).abs().argmin(dim=-1).to(torch.uint8)
        code = code | ((v < 0) & (code > 0)).to(torch.uint8) << 3
        packed = code[:, 0::2] | (code[:, 1::2] << 4)
        base = name[: -len(".weight")]
        self.t[name] = packed.view(torch.int8).cpu()
        self.t[base + ".scale"] = (e.view(rows, cols // 32) + 127).to(torch.uint8).view(
            torch.float8_e8m0fnu).cpu()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts-dtype", default="fp4", choices=["fp4", "fp8"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.time()
    c = config(a.layers, a.experts_dtype)
    H, V, heads, hd = c["hidden_size"], c["vocab_size"], c["num_attention_heads"], c["head_dim"]
    qr, og, orank, hc = c["q_lora_rank"], c["o_groups"], c["o_lora_rank"], c["hc_mult"]
    E, k, inter = c["n_routed_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"]
    ih, ihd = c["index_n_heads"], c["index_head_dim"]
    mix = (2 + hc) * hc
    w = Writer(a.seed)
    w.bf16("model.embed_tokens.weight", V, H)
    w.bf16("head.weight", V, H)
    w.f32("model.norm.weight", (H,), 1.0, 0.1)
    w.f32("model.hc_head.hc_fn", (hc, hc * H), 0.0, 0.02)
    w.f32("model.hc_head.hc_base", (hc,), 0.0, 0.5)
    w.f32("model.hc_head.hc_scale", (1,), 1.0, 0.1)
    expert = w.fp4 if a.experts_dtype == "fp4" else w.fp8
    for l in range(a.layers):
        p = f"model.layers.{l}."
        kind = c["layer_types"][l]
        for which in ("attn", "ffn"):
            w.f32(p + f"hc_{which}_fn", (mix, hc * H), 0.0, 0.02)
            w.f32(p + f"hc_{which}_base", (mix,), 0.0, 0.5)
            w.f32(p + f"hc_{which}_scale", (3,), 1.0, 0.1)
        w.f32(p + "attn_norm.weight", (H,), 1.0, 0.1)
        w.f32(p + "ffn_norm.weight", (H,), 1.0, 0.1)
        w.fp8(p + "attn.wq_a.weight", qr, H)
        w.f32(p + "attn.q_norm.weight", (qr,), 1.0, 0.1)
        w.fp8(p + "attn.wq_b.weight", heads * hd, qr)
        w.fp8(p + "attn.wkv.weight", hd, H)
        w.f32(p + "attn.norm.weight", (hd,), 1.0, 0.1)
        w.fp8(p + "attn.wo_a.weight", og * orank, heads * hd // og)
        w.fp8(p + "attn.wo_b.weight", H, og * orank)
        w.f32(p + "attn.attn_sink", (heads,), 0.0, 1.0)
        if kind != "sliding_attention":
            csa = kind == "compressed_sparse_attention"
            rate = c["compress_rates"][kind]
            coff = 2 if csa else 1
            w.fp8(p + "attn.compressor.wkv.weight", coff * hd, H)
            w.fp8(p + "attn.compressor.wgate.weight", coff * hd, H)
            w.f32(p + "attn.compressor.ape", (rate, coff * hd), 0.0, 0.5)
            w.f32(p + "attn.compressor.norm.weight", (hd,), 1.0, 0.1)
            if csa:
                w.fp8(p + "attn.indexer.compressor.wkv.weight", 2 * ihd, H)
                w.fp8(p + "attn.indexer.compressor.wgate.weight", 2 * ihd, H)
                w.f32(p + "attn.indexer.compressor.ape", (rate, 2 * ihd), 0.0, 0.5)
                w.f32(p + "attn.indexer.compressor.norm.weight", (ihd,), 1.0, 0.1)
                w.fp8(p + "attn.indexer.wq_b.weight", ih * ihd, qr)
                w.fp8(p + "attn.indexer.weights_proj.weight", ih, H)
        w.t[p + "ffn.gate.weight"] = (w.randn((E, H), 1 / math.sqrt(H))).to(torch.bfloat16).cpu()
        if c["mlp_layer_types"][l] == "hash_moe":
            ids = torch.stack([torch.randperm(E, generator=w.g, device="cuda")[:k]
                               for _ in range(1)]).repeat(V, 1)
            # distinct experts per token: a random rotation of one permutation per token
            shift = torch.randint(0, E, (V, 1), generator=w.g, device="cuda")
            w.t[p + "ffn.gate.tid2eid"] = ((ids + shift) % E).to(torch.int64).cpu()
        else:
            w.f32(p + "ffn.gate.bias", (E,), 0.0, 0.1)
        for e in range(E):
            ep = p + f"ffn.experts.{e}."
            expert(ep + "w1.weight", inter, H)
            expert(ep + "w2.weight", H, inter)
            expert(ep + "w3.weight", inter, H)
        w.fp8(p + "ffn.shared_experts.w1.weight", inter, H)
        w.fp8(p + "ffn.shared_experts.w2.weight", H, inter)
        w.fp8(p + "ffn.shared_experts.w3.weight", inter, H)
        print(f"layer {l} ({kind}) generated, {time.time() - t0:.1f}s", flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    save_file(w.t, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    size = os.path.getsize(os.path.join(a.out, "model.safetensors"))
    print(f"checkpoint {a.out}: {len(w.t)} tensors, {size / 1e9:.2f} GB, {time.time() - t0:.1f}s",
          flush=True)


if __name__ == "__main__":
    main()
