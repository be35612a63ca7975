"""Test helpers: tiny random llama models whose matrices are in one of the low-bit formats (IQ2_XXS ..
MXFP4), written block by block from random bytes (every byte pattern is a valid block of these formats;
the scale fields are set so that the weights have the spread of a trained model's), so no quantizer is
needed: llama.cpp and edgeinfer decode the same bits. tests/fixtures/logits_lowbit.npz holds llama.cpp's
logits on them (tests/fixtures/make_lowbit_fixture.py) and each file's sha256.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

from edgeinfer import quant

N_VOCAB = 256
N_TOKENS = 48
N_CTX = 256
N_EMBD, N_FF, N_LAYER, N_HEAD, N_HEAD_KV = 256, 512, 2, 4, 2
LOWBIT_MODELS = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4"]


def _set_scale(b: np.ndarray, ggml_type: T, d: np.ndarray) -> None:
    """Set every block's super-block scale to d (fp16), or for MXFP4 the exponent nearest d."""
    if ggml_type == T.MXFP4:
        b["e"] = np.clip(np.round(np.log2(d)) + 128, 1, 254).astype(np.uint8)
    elif ggml_type == T.IQ1_M:
        h = d.astype(np.float16).view(np.uint16)
        for k in range(4):
            b["scales"][:, k] = (b["scales"][:, k] & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12)
    else:
        b["d"] = d.astype(np.float16)


def random_matrix(rng: np.random.Generator, ggml_type: T, n_out: int, n_in: int, std: float) -> np.ndarray:
    """Raw blocks (n_out, row_bytes) of random codes, scales drawn around the value giving `std`."""
    fmt = quant.get_format(ggml_type)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    n_blocks = n_out * n_in // block_size
    raw = rng.integers(0, 256, n_blocks * type_size, dtype=np.uint8)
    b = raw.view(fmt.block_dtype)
    _set_scale(b, ggml_type, np.ones(n_blocks, np.float32))
    unit = float(np.sqrt(np.mean(fmt.dequantize(raw) ** 2)))  # the spread at scale 1
    _set_scale(b, ggml_type, (std / unit) * np.exp(rng.normal(0.0, 0.2, n_blocks)).astype(np.float32))
    return raw.reshape(n_out, -1)


def write_lowbit_model(path: str | Path, name: str) -> Path:
    ggml_type = T[name]
    path = Path(path)
    rng = np.random.default_rng(500 + LOWBIT_MODELS.index(name))
    w = gguf.GGUFWriter(str(path), "llama")
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
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", [f"<{i}>" for i in range(N_VOCAB)])
    w.add_array("tokenizer.ggml.token_type", [1] * N_VOCAB)
    w.add_array("tokenizer.ggml.merges", ["< 1"])
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)

    def matrix(name: str, n_out: int, n_in: int, std: float | None = None) -> None:
        std = 1.0 / math.sqrt(n_in) if std is None else std
        w.add_tensor(name, random_matrix(rng, ggml_type, n_out, n_in, std), raw_dtype=ggml_type)

    def vector(name: str, n: int) -> None:
        w.add_tensor(name, rng.normal(1.0, 0.1, n).astype(np.float32))

    matrix("token_embd.weight", N_VOCAB, N_EMBD, std=1.0)  # a lookup (get_rows)
    vector("output_norm.weight", N_EMBD)
    matrix("output.weight", N_VOCAB, N_EMBD, std=4.0 / math.sqrt(N_EMBD))  # logits of a few units
    nq, nkv = N_HEAD * head_dim, N_HEAD_KV * head_dim
    for il in range(N_LAYER):
        b = f"blk.{il}."
        vector(b + "attn_norm.weight", N_EMBD)
        matrix(b + "attn_q.weight", nq, N_EMBD)
        matrix(b + "attn_k.weight", nkv, N_EMBD)
        matrix(b + "attn_v.weight", nkv, N_EMBD)
        matrix(b + "attn_output.weight", N_EMBD, nq)
        vector(b + "ffn_norm.weight", N_EMBD)
        matrix(b + "ffn_gate.weight", N_FF, N_EMBD)
        matrix(b + "ffn_up.weight", N_FF, N_EMBD)
        matrix(b + "ffn_down.weight", N_EMBD, N_FF)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_all(directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    return {name: write_lowbit_model(directory / f"{name.lower()}.gguf", name) for name in LOWBIT_MODELS}


def prompt_ids() -> np.ndarray:
    return np.random.default_rng(8765).integers(3, N_VOCAB, N_TOKENS).astype(np.int32)
