"""Test helpers: tiny random LFM2 models (llama.cpp's LLM_ARCH_LFM2, and LFM2MOE) with the family's real
tensor names and keys, that llama.cpp runs too: short-convolution layers (blk.N.shortconv.{in_proj,conv,out_proj}) and
attention layers with QK-norm, which is which given by `lfm2.attention.head_count_kv` per layer (0: a
convolution), the output norm under llama.cpp's name `token_embd_norm`.

`write_lfm2_model(path, name)` writes LFM2_MODELS[name] from its fixed seed (the same bytes every time:
tests/fixtures/logits_lfm2.npz records llama.cpp's logits on them, made by tests/fixtures/make_lfm2_fixture.py,
and the sha256 of each file). A placeholder gpt2-style vocabulary (token i is "<i>") lets llama.cpp load
them; the tests feed token ids.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from edgeinfer.quant import dequantize, quantize
from model_writer import ModelWriter, add_experts

N_VOCAB = 256
N_TOKENS = 48  # enough for the window of 8 below to slide
N_CTX = 256

# name -> (weight type, options). layers: "c" a short convolution, "a" attention (LFM2-350M's 16 layers
# are ccaccaccacacacac; these keep its mix in small)
LFM2_MODELS: dict[str, tuple[T, dict]] = {
    # LFM2's shape in small: L = 3 (conv_L_cache), GQA 4/2 heads of 32, tied output head
    "lfm2_q8_0": (T.Q8_0, dict(layers="ccacac", n_taps=3)),
    # a longer kernel, a sliding window on the attention layers (LFM2.5's option), an output head of its own
    "lfm2_swa_f16": (T.F16, dict(layers="cacca", n_taps=4, n_swa=8, tied=False)),
    # LFM2-8B-A1B's shape in small (lfm2moe): two dense layers, then 8 experts (2 used) with sigmoid routing
    # and a selection bias; in F32 (rounding activations, to int8 blocks or f16, flips near-tied expert choices)
    "lfm2moe_f32": (T.F32, dict(layers="ccacac", n_taps=3, n_expert=8, n_expert_used=2, n_dense_lead=2)),
}


def write_lfm2_model(path: str | Path, name: str, as_f32: bool = False) -> Path:
    """as_f32: the same weights (after rounding to the model's type) stored in F32: llama.cpp on that copy
    computes without rounding its activations to the weights' dot-product type (Q8_0's int8)."""
    wtype, o = LFM2_MODELS[name]
    return write_tiny_lfm2(path, wtype, seed=list(LFM2_MODELS).index(name) + 200, as_f32=as_f32, **o)


def write_tiny_lfm2(path, wtype: T, *, seed: int = 0, layers: str = "ccacac", n_taps: int = 3, n_embd: int = 128,
                    n_head: int = 4, n_head_kv: int = 2, head_dim: int | None = None, n_ff: int = 256, n_swa: int = 0,
                    tied: bool = True, rope_base: float = 1000000.0, as_f32: bool = False, n_expert: int = 0,
                    n_expert_used: int = 0, n_ff_exp: int = 64, n_dense_lead: int = 0,
                    n_vocab: int = N_VOCAB, causal: bool = True) -> Path:  # fmt: skip
    """head_dim: written as attention.key_length / value_length when given (default n_embd / n_head).
    n_expert > 0: an lfm2moe model, the layers from n_dense_lead on with n_expert experts of n_ff_exp."""
    arch = "lfm2moe" if n_expert else "lfm2"
    m = ModelWriter(path, arch, wtype, seed)
    w = m.writer
    p = arch + "."
    w.add_uint32(p + "vocab_size", n_vocab)
    w.add_uint32(p + "context_length", 128000)
    w.add_uint32(p + "embedding_length", n_embd)
    w.add_uint32(p + "block_count", len(layers))
    w.add_uint32(p + "feed_forward_length", n_ff)
    w.add_uint32(p + "attention.head_count", n_head)
    w.add_array(p + "attention.head_count_kv", [n_head_kv if kind == "a" else 0 for kind in layers])
    if head_dim:
        w.add_uint32(p + "attention.key_length", head_dim)
        w.add_uint32(p + "attention.value_length", head_dim)
    head_dim = head_dim or n_embd // n_head
    w.add_float32(p + "rope.freq_base", rope_base)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(p + "shortconv.l_cache", n_taps)
    if n_swa:
        w.add_uint32(p + "attention.sliding_window", n_swa)
    if not causal:  # LFM2.5-Embedding's bidirectional variant (Lfm2BidirectionalModel)
        w.add_bool(p + "attention.causal", False)
    if n_expert:
        w.add_uint32(p + "expert_count", n_expert)
        w.add_uint32(p + "expert_used_count", n_expert_used)
        w.add_uint32(p + "expert_feed_forward_length", n_ff_exp)
        w.add_uint32(p + "leading_dense_block_count", n_dense_lead)
        w.add_uint32(p + "expert_gating_func", 2)  # sigmoid, as convert_hf_to_gguf writes for LFM2-MoE
    m.placeholder_vocab(n_vocab, pre="lfm2")
    vector = m.vector

    def matrix(name: str, n_out: int, n_in: int, std: float | None = None) -> None:
        if not as_f32:
            return m.matrix(name, n_out, n_in, std)
        x = m.normal((n_out, n_in), std)
        if wtype not in (T.F32, T.F16):  # legacy formats only: they draw nothing more from rng
            w.add_tensor(name, dequantize(quantize(x, wtype), wtype, x.shape).astype(np.float32))
        else:
            w.add_tensor(name, x.astype(wtype == T.F16 and np.float16 or np.float32).astype(np.float32))

    def experts(name: str, n_out: int, n_in: int, std: float) -> None:
        if not as_f32:
            return m.experts(name, n_expert, n_out, n_in, std, wtype)
        x = m.normal((n_expert, n_out, n_in), std)
        x = dequantize(quantize(x.reshape(-1, n_in), wtype), wtype, (n_expert * n_out, n_in)).reshape(x.shape)
        add_experts(w, name, x, T.F32)

    matrix("token_embd.weight", n_vocab, n_embd, std=0.25)  # tied logits of a trained model's size (~10)
    vector("token_embd_norm.weight", n_embd, 1.0, 0.1)  # the output norm, by llama.cpp's name for it
    if not tied:
        matrix("output.weight", n_vocab, n_embd, std=3.0 / math.sqrt(n_embd))
    for il, kind in enumerate(layers):
        b = f"blk.{il}."
        vector(b + "attn_norm.weight", n_embd, 1.0, 0.1)  # operator_norm
        if kind == "c":
            matrix(b + "shortconv.in_proj.weight", 3 * n_embd, n_embd)  # [B | C | x]
            # (n_embd, L) in numpy order: ne (L, n_embd); kept in F32, as llama-quantize keeps it
            w.add_tensor(b + "shortconv.conv.weight", m.normal((n_embd, n_taps), 0.5))
            matrix(b + "shortconv.out_proj.weight", n_embd, n_embd)
        else:
            matrix(b + "attn_q.weight", n_head * head_dim, n_embd)
            matrix(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
            matrix(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
            vector(b + "attn_q_norm.weight", head_dim, 1.0, 0.1)
            vector(b + "attn_k_norm.weight", head_dim, 1.0, 0.1)
            matrix(b + "attn_output.weight", n_embd, n_head * head_dim)
        vector(b + "ffn_norm.weight", n_embd, 1.0, 0.1)
        if n_expert and il >= n_dense_lead:  # router logits of std ~2.5: the choice varies token to token
            w.add_tensor(b + "ffn_gate_inp.weight", m.normal((n_expert, n_embd), 2.5 / math.sqrt(n_embd)))
            vector(b + "exp_probs_b.bias", n_expert, 0.0, 0.3)
            experts(b + "ffn_gate_exps.weight", n_ff_exp, n_embd, 1.0 / math.sqrt(n_embd))
            experts(b + "ffn_up_exps.weight", n_ff_exp, n_embd, 1.0 / math.sqrt(n_embd))
            experts(b + "ffn_down_exps.weight", n_embd, n_ff_exp, 2.0 / math.sqrt(n_ff_exp))
            continue
        matrix(b + "ffn_gate.weight", n_ff, n_embd)
        matrix(b + "ffn_up.weight", n_ff, n_embd)
        matrix(b + "ffn_down.weight", n_embd, n_ff)
    return m.write()


def write_all(directory: str | Path, as_f32: bool = False) -> dict[str, Path]:
    directory = Path(directory)
    tag = ".f32" if as_f32 else ""
    return {name: write_lfm2_model(directory / f"{name}{tag}.gguf", name, as_f32) for name in LFM2_MODELS}


def float_copies(directory: str | Path, paths: dict[str, Path]) -> dict[str, Path]:
    """Of every model written (paths: write_all's), the copy with its weights stored in F32 (the oracle's
    run without activation rounding: tests/fixtures/make_lfm2_fixture.py)."""
    return write_all(directory, as_f32=True)


def prompt_ids() -> np.ndarray:
    return np.random.default_rng(8642).integers(3, N_VOCAB, N_TOKENS).astype(np.int32)
