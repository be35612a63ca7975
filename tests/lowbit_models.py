"""Test helpers: tiny random llama models whose matrices are in one of the low-bit formats (IQ2_XXS ..
MXFP4), written block by block from random bytes (every byte pattern is a valid block of these formats;
the scale fields are set so that the weights have the spread of a trained model's), so no quantizer is
needed: llama.cpp and edgeinfer decode the same bits. tests/fixtures/logits_lowbit.npz holds llama.cpp's
logits on them (tests/fixtures/make_lowbit_fixture.py) and each file's sha256.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from model_writer import ModelWriter

N_VOCAB = 256
N_TOKENS = 48
N_CTX = 256
N_EMBD, N_FF, N_LAYER, N_HEAD, N_HEAD_KV = 256, 512, 2, 4, 2
LOWBIT_MODELS = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4"]


def write_lowbit_model(path: str | Path, name: str) -> Path:
    ggml_type = T[name]
    m = ModelWriter(path, "llama", ggml_type, 500 + LOWBIT_MODELS.index(name))
    w = m.writer
    head_dim = N_EMBD // N_HEAD
    w.add_uint32("llama.context_length", 4096)
    w.add_uint32("llama.embedding_length", N_EMBD)
    w.add_uint32("llama.block_count", N_LAYER)
    w.add_uint32("llama.feed_forward_length", N_FF)
    w.add_uint32("llama.attention.head_count", N_HEAD)
    w.add_uint32("llama.attention.head_count_kv", N_HEAD_KV)
    w.add_uint32("llama.rope.dimension_count", head_dim)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32("llama.rope.freq_base", 10000.0)
    m.placeholder_vocab(N_VOCAB)
    matrix, vector = m.matrix, m.vector  # the matrices: random codes with set scales (ModelWriter.matrix)
    matrix("token_embd.weight", N_VOCAB, N_EMBD, std=1.0)  # a lookup (get_rows)
    vector("output_norm.weight", N_EMBD, 1.0, 0.1)
    matrix("output.weight", N_VOCAB, N_EMBD, std=4.0 / math.sqrt(N_EMBD))  # logits of a few units
    nq, nkv = N_HEAD * head_dim, N_HEAD_KV * head_dim
    for il in range(N_LAYER):
        b = f"blk.{il}."
        vector(b + "attn_norm.weight", N_EMBD, 1.0, 0.1)
        matrix(b + "attn_q.weight", nq, N_EMBD)
        matrix(b + "attn_k.weight", nkv, N_EMBD)
        matrix(b + "attn_v.weight", nkv, N_EMBD)
        matrix(b + "attn_output.weight", N_EMBD, nq)
        vector(b + "ffn_norm.weight", N_EMBD, 1.0, 0.1)
        matrix(b + "ffn_gate.weight", N_FF, N_EMBD)
        matrix(b + "ffn_up.weight", N_FF, N_EMBD)
        matrix(b + "ffn_down.weight", N_EMBD, N_FF)
    return m.write()


def write_all(directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    return {name: write_lowbit_model(directory / f"{name.lower()}.gguf", name) for name in LOWBIT_MODELS}


def prompt_ids() -> np.ndarray:
    return np.random.default_rng(8765).integers(3, N_VOCAB, N_TOKENS).astype(np.int32)
