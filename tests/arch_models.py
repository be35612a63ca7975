"""Test helpers: tiny random GGUF files of the architectures added for issue 19 (phi3, gemma2, granite,
smollm3), with each family's real tensor names and hyper-parameter keys, that llama.cpp runs too.

`write_arch_model(path, name)` writes the model ARCH_MODELS[name] from its fixed seed (the same bytes
every time: tests/fixtures/logits_archs.npz records llama.cpp's logits on them, made by
tests/fixtures/make_arch_fixture.py, and the sha256 of each file). A placeholder gpt2-style vocabulary
(token i is "<i>") is enough for llama.cpp to load them; the tests feed token ids.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from model_writer import ModelWriter

N_VOCAB = 256
N_TOKENS = 40  # enough for the windows of 5 and 8 below to slide, and for rope to turn
N_CTX = 512  # the context both programs run with (phi3's long/short rope factors depend on it)

# name -> (architecture, weight type, options). The options are the family's distinguishing features.
ARCH_MODELS: dict[str, tuple[str, T, dict]] = {
    # Phi-4-mini's shape in small: GQA, partial rotary (3/4 of the head), LongRoPE factors; the original
    # context (64) is below N_CTX, so llama.cpp uses rope_factors_long, with attn_factor 1.19
    "phi3_long_q8_0": ("phi3", T.Q8_0, dict(n_embd=128, n_rot=24, orig_ctx=64, attn_factor=1.19, tied=False)),
    # Phi-3.5-mini-like: full rotary, original context 4096 > N_CTX: rope_factors_short
    "phi3_short_f16": ("phi3", T.F16, dict(n_head_kv=4, orig_ctx=4096, attn_factor=1.1, tied=False)),
    # Gemma 2: caps small enough to bite on random weights, window 5 on even layers
    "gemma2_q8_0": ("gemma2", T.Q8_0, dict(n_layer=4, n_swa=5, attn_softcap=2.0, final_softcap=4.0, head_dim=32)),
    "gemma2_q4_0": ("gemma2", T.Q4_0, dict(n_layer=4, n_swa=8, attn_softcap=50.0, final_softcap=30.0)),
    # Granite 3.x's multipliers (embedding 12, residual 0.22, attention 1/64, logits / 8)
    "granite_q8_0": ("granite", T.Q8_0, dict(embedding_scale=12.0, residual_scale=0.22, attention_scale=0.125,
                                              logit_scale=8.0)),  # fmt: skip
    "granite_bias_f16": ("granite", T.F16, dict(embedding_scale=2.0, residual_scale=0.5, logit_scale=2.0, bias=True)),
    # SmolLM3: 8 layers, layers 3 and 7 without rope
    "smollm3_q8_0": ("smollm3", T.Q8_0, dict(n_layer=8)),
}


def write_arch_model(path: str | Path, name: str) -> Path:
    arch, wtype, o = ARCH_MODELS[name]
    return write_tiny(path, arch, wtype, seed=list(ARCH_MODELS).index(name) + 100, **o)


def write_tiny(path, arch: str, wtype: T, *, seed: int = 0, n_embd: int = 64, n_layer: int = 4, n_head: int = 4,
               n_head_kv: int = 2, head_dim: int | None = None, n_ff: int = 128, n_rot: int | None = None,
               orig_ctx: int = 0, attn_factor: float = 1.0, n_swa: int = 0, attn_softcap: float = 50.0,
               final_softcap: float = 30.0, embedding_scale: float = 1.0, residual_scale: float = 1.0,
               attention_scale: float = 0.0, logit_scale: float = 1.0, bias: bool = False,
               tied: bool = True) -> Path:  # fmt: skip
    head_dim = head_dim or n_embd // n_head
    n_rot = n_rot or head_dim
    m = ModelWriter(path, arch, wtype, seed)
    w = m.writer
    p = arch + "."
    w.add_uint32(p + "context_length", 8192)
    w.add_uint32(p + "embedding_length", n_embd)
    w.add_uint32(p + "block_count", n_layer)
    w.add_uint32(p + "feed_forward_length", n_ff)
    w.add_uint32(p + "attention.head_count", n_head)
    w.add_uint32(p + "attention.head_count_kv", n_head_kv)
    w.add_uint32(p + "attention.key_length", head_dim)
    w.add_uint32(p + "attention.value_length", head_dim)
    w.add_uint32(p + "rope.dimension_count", n_rot)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(p + "rope.freq_base", 10000.0)
    if arch == "phi3":
        w.add_uint32(p + "rope.scaling.original_context_length", orig_ctx)
        w.add_float32(p + "rope.scaling.attn_factor", attn_factor)
        w.add_uint32(p + "attention.sliding_window", 2047)  # as Phi-3 files carry it; llama.cpp ignores it
    if arch == "gemma2":
        w.add_uint32(p + "attention.sliding_window", n_swa)
        w.add_float32(p + "attn_logit_softcapping", attn_softcap)
        w.add_float32(p + "final_logit_softcapping", final_softcap)
    if arch == "granite":
        w.add_float32(p + "embedding_scale", embedding_scale)
        w.add_float32(p + "residual_scale", residual_scale)
        w.add_float32(p + "logit_scale", logit_scale)
        if attention_scale:
            w.add_float32(p + "attention.scale", attention_scale)
    m.placeholder_vocab(N_VOCAB)
    matrix, vector = m.matrix, m.vector
    gemma = arch == "gemma2"
    matrix("token_embd.weight", N_VOCAB, n_embd, std=1.0 / math.sqrt(n_embd) if gemma else 1.0)
    vector("output_norm.weight", n_embd, 1.0, 0.1)
    if not tied and not gemma:
        matrix("output.weight", N_VOCAB, n_embd, std=3.0 / math.sqrt(n_embd))
    if arch == "phi3":  # LongRoPE: factors >= 1, the long ones larger, one of n_rot / 2 per pair
        w.add_tensor("rope_factors_short.weight", np.geomspace(1.0, 1.5, n_rot // 2).astype(np.float32))
        w.add_tensor("rope_factors_long.weight", np.geomspace(1.0, 40.0, n_rot // 2).astype(np.float32))
    nq, nkv = n_head * head_dim, n_head_kv * head_dim
    for il in range(n_layer):
        b = f"blk.{il}."
        vector(b + "attn_norm.weight", n_embd, 1.0, 0.1)
        if arch == "phi3":
            matrix(b + "attn_qkv.weight", nq + 2 * nkv, n_embd)
        else:
            matrix(b + "attn_q.weight", nq, n_embd)
            matrix(b + "attn_k.weight", nkv, n_embd)
            matrix(b + "attn_v.weight", nkv, n_embd)
        matrix(b + "attn_output.weight", n_embd, nq)
        if bias:
            vector(b + "attn_output.bias", n_embd, 0.0, 0.2)
        if gemma:
            vector(b + "post_attention_norm.weight", n_embd, 1.0, 0.1)
            vector(b + "post_ffw_norm.weight", n_embd, 1.0, 0.1)
        vector(b + "ffn_norm.weight", n_embd, 1.0, 0.1)
        if arch == "phi3":
            matrix(b + "ffn_up.weight", 2 * n_ff, n_embd)  # [gate | up]
        else:
            matrix(b + "ffn_gate.weight", n_ff, n_embd)
            matrix(b + "ffn_up.weight", n_ff, n_embd)
        matrix(b + "ffn_down.weight", n_embd, n_ff)
        if bias:
            vector(b + "ffn_gate.bias", n_ff, 0.0, 0.2)
            vector(b + "ffn_up.bias", n_ff, 0.0, 0.2)
            vector(b + "ffn_down.bias", n_embd, 0.0, 0.2)
    return m.write()


def write_all(directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    return {name: write_arch_model(directory / f"{name}.gguf", name) for name in ARCH_MODELS}


def prompt_ids() -> np.ndarray:
    return np.random.default_rng(4321).integers(3, N_VOCAB, N_TOKENS).astype(np.int32)
