"""Test helpers: tiny random gpt-oss models (llama.cpp's `gpt-oss` architecture, LLM_ARCH_OPENAI_MOE) with
the real files' tensor names, tensor types and hyper-parameter keys, that llama.cpp runs too.

What the real gpt-oss-20b file has, in small: head size (key_length) apart from n_embd / n_head, GQA, Q/K/V
and output biases, attn_sinks per head, a sliding window on even layers (attention.sliding_window),
YaRN (rope.scaling.type yarn, factor 32 over 4096 positions, freq_base 150000), a router with a bias,
experts in MXFP4 with F32 biases (expert_feed_forward_length), an untied output head; norms, biases,
sinks and the router in F32 (as llama-quantize keeps them). The experts' SwiGLU inputs are large enough
that OpenAI's clamp (limit 7) bites. The expert blocks are random codes with set scales
(model_writer.random_lowbit: every byte pattern is an MXFP4 block), so no quantizer is needed.

`write_gptoss_model(path, name)` writes GPTOSS_MODELS[name] from its fixed seed (the same bytes every
time: tests/fixtures/logits_gptoss.npz holds llama.cpp's logits on them, made by
tests/fixtures/make_gptoss_fixture.py, and each file's sha256). A placeholder gpt2-style vocabulary
(token i is "<i>") with gpt-oss's pre-tokenizer name is enough for llama.cpp to load them; the tests
feed token ids.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from model_writer import ModelWriter, random_lowbit

N_VOCAB = 256
N_TOKENS = 64  # several times the sliding windows below; full layers see up to 64 cells
N_CTX = 512

# name -> options: the weight type of attention, embedding and output, and the shape
GPTOSS_MODELS: dict[str, dict] = {
    # gpt-oss-20b in small: 4 query heads of 32 over n_embd 64 (as 64 x 64 over 2880), 2 KV heads,
    # 8 experts, 4 used, window 8
    "gptoss_q8_0": dict(wtype=T.Q8_0, n_swa=8, n_head_kv=2, n_expert=8, n_expert_used=4, sink_mean=2.0),
    # F16 attention, one KV head, window 5, 4 experts of which 2 are used
    "gptoss_f16": dict(wtype=T.F16, n_swa=5, n_head_kv=1, n_expert=4, n_expert_used=2, sink_mean=1.0),
}


def write_gptoss_model(path: str | Path, name: str) -> Path:
    return write_gptoss(path, seed=700 + list(GPTOSS_MODELS).index(name), **GPTOSS_MODELS[name])


def write_gptoss(path, *, wtype: T, seed: int, n_swa: int, n_head_kv: int, n_expert: int, n_expert_used: int,
                 sink_mean: float, n_embd: int = 64, n_layer: int = 4, n_head: int = 4, head_dim: int = 32,
                 n_ff: int = 64) -> Path:  # fmt: skip
    m = ModelWriter(path, "gpt-oss", wtype, seed)
    w = m.writer
    p = "gpt-oss."
    # the keys convert_hf_to_gguf.py writes for GptOssForCausalLM
    w.add_uint32(p + "context_length", 131072)
    w.add_uint32(p + "embedding_length", n_embd)
    w.add_uint32(p + "block_count", n_layer)
    w.add_uint32(p + "feed_forward_length", n_ff)
    w.add_uint32(p + "attention.head_count", n_head)
    w.add_uint32(p + "attention.head_count_kv", n_head_kv)
    w.add_float32(p + "rope.freq_base", 150000.0)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(p + "expert_count", n_expert)
    w.add_uint32(p + "expert_used_count", n_expert_used)
    w.add_uint32(p + "attention.key_length", head_dim)
    w.add_uint32(p + "attention.value_length", head_dim)
    w.add_string(p + "rope.scaling.type", "yarn")
    w.add_float32(p + "rope.scaling.factor", 32.0)
    w.add_uint32(p + "rope.scaling.original_context_length", 4096)
    w.add_uint32(p + "attention.sliding_window", n_swa)
    w.add_uint32(p + "expert_feed_forward_length", n_ff)
    m.placeholder_vocab(N_VOCAB, pre="gpt-4o")
    matrix = m.matrix

    def vector(name: str, *shape: int, mean: float = 0.0, std: float = 0.2) -> None:
        m.vector(name, shape, mean, std)

    def experts(name: str, n_out: int, n_in: int, std: float) -> None:  # (n_expert, n_out, row bytes)
        raw = np.stack([random_lowbit(m.rng, T.MXFP4, n_out, n_in, std) for _ in range(n_expert)])
        w.add_tensor(name, raw, raw_dtype=T.MXFP4)

    nq, nkv = n_head * head_dim, n_head_kv * head_dim
    matrix("token_embd.weight", N_VOCAB, n_embd, std=1.0)
    vector("output_norm.weight", n_embd, mean=1.0, std=0.1)
    matrix("output.weight", N_VOCAB, n_embd, std=3.0 / math.sqrt(n_embd))
    for il in range(n_layer):
        b = f"blk.{il}."
        vector(b + "attn_norm.weight", n_embd, mean=1.0, std=0.1)
        matrix(b + "attn_q.weight", nq, n_embd)
        vector(b + "attn_q.bias", nq)
        matrix(b + "attn_k.weight", nkv, n_embd)
        vector(b + "attn_k.bias", nkv)
        matrix(b + "attn_v.weight", nkv, n_embd)
        vector(b + "attn_v.bias", nkv)
        matrix(b + "attn_output.weight", n_embd, nq)
        vector(b + "attn_output.bias", n_embd)
        vector(b + "attn_sinks.weight", n_head, mean=sink_mean, std=1.0)
        vector(b + "post_attention_norm.weight", n_embd, mean=1.0, std=0.1)
        w.add_tensor(b + "ffn_gate_inp.weight", m.normal((n_expert, n_embd)))  # F32, as llama-quantize keeps it
        vector(b + "ffn_gate_inp.bias", n_expert, std=0.5)
        experts(b + "ffn_gate_exps.weight", n_ff, n_embd, 3.5 / math.sqrt(n_embd))  # some gates pass 7
        vector(b + "ffn_gate_exps.bias", n_expert, n_ff, std=0.5)
        experts(b + "ffn_up_exps.weight", n_ff, n_embd, 3.5 / math.sqrt(n_embd))
        vector(b + "ffn_up_exps.bias", n_expert, n_ff, std=0.5)
        experts(b + "ffn_down_exps.weight", n_embd, n_ff, 0.15 / math.sqrt(n_ff))
        vector(b + "ffn_down_exps.bias", n_expert, n_embd)
    return m.write()


def write_all(directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    return {name: write_gptoss_model(directory / f"{name}.gguf", name) for name in GPTOSS_MODELS}


def prompt_ids() -> np.ndarray:
    return np.random.default_rng(2468).integers(3, N_VOCAB, N_TOKENS).astype(np.int32)
