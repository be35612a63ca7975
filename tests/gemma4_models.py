"""Test helpers: tiny random Gemma 4 GGUF files with the family's real tensor names and keys, as
llama.cpp's converter (conversion/gemma.py, Gemma4Model) writes them and llama.cpp runs them.

What Gemma 4 carries beyond Gemma 3, each exercised here:
- a per-layer sliding-window pattern (attention.sliding_window_pattern, one bool per layer);
- different head sizes, rope sizes and KV-head counts for sliding and global layers
  (attention.key_length_swa, rope.dimension_count_swa, attention.head_count_kv as an array);
- "proportional" rope on global layers: rope_freqs.weight, 1 for the pairs that turn, 1e30 for the rest;
- V normalized without a weight; global layers without attn_v reuse K's projection as V (31B, 26B);
- per-layer embeddings (embedding_length_per_layer_input, per_layer_token_embd, per_layer_model_proj,
  per_layer_proj_norm, blk.N.inp_gate / proj / post_norm) in the E2B/E4B models;
- KV sharing: the last attention.shared_kv_layers layers read the cache of the last sliding or global
  layer before them; a double-wide feed-forward in those layers (feed_forward_length as an array);
- blk.N.layer_output_scale, final logit soft-capping, attention scale 1;
- the 26B-A4B mixture of experts: beside each layer's dense feed-forward, experts (ffn_gate_up_exps fused,
  ffn_down_exps and its per-expert .scale) routed by ffn_gate_inp from its own norm (ffn_gate_inp.scale),
  with pre_ffw_norm_2, post_ffw_norm_1 and post_ffw_norm_2.

`write_gemma4_model(path, name)` writes GEMMA4_MODELS[name] from its fixed seed (the same bytes every
time: tests/fixtures/logits_gemma4.npz records llama.cpp's logits and each file's sha256, made by
tests/fixtures/make_gemma4_fixture.py). A placeholder gpt2-style vocabulary (token i is "<i>"); the
tests feed token ids.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from model_writer import ModelWriter

N_VOCAB = 256
N_TOKENS = 48  # longer than the windows below, so that they slide
N_CTX = 512

# name -> (weight type, seed, options)
GEMMA4_MODELS: dict[str, tuple[T, int, dict]] = {
    # E2B in small: per-layer embeddings, the last 3 of 7 layers share KV (and have a double-wide
    # feed-forward), global layers with twice the head size, a quarter of it rotating, and 1 KV head
    "gemma4_e2b_q8_0": (T.Q8_0, 400, dict(swa=(1, 1, 1, 0, 1, 1, 0), n_kv_shared=3, n_embd_per_layer=32, n_swa=5,
                                         n_head_kv=(2, 1), double_wide=True, final_softcap=15.0)),
    # 31B in small: no per-layer embeddings, no sharing, global layers without attn_v (V is K), an output
    # head of its own
    "gemma4_31b_f16": (T.F16, 401, dict(swa=(1, 1, 0, 1, 1, 0), n_swa=8, n_head_kv=(2, 2), k_eq_v=True, tied=False,
                                        final_softcap=30.0)),
    # E4B in small: 5 sliding layers to a global one, the last 6 of 12 share KV; float weights, so that
    # llama.cpp and edgeinfer differ only by rounding
    "gemma4_e4b_f16": (T.F16, 402, dict(swa=(1, 1, 1, 1, 1, 0) * 2, n_kv_shared=6, n_embd_per_layer=32, n_swa=6,
                                        n_head_kv=(2, 2), double_wide=True, final_softcap=15.0)),
    # 26B-A4B in small (its real keys: llama.cpp's models/ggml-vocab-gemma-4.gguf): 8 experts, 2 per token,
    # 5 sliding layers to a global one with 4 and 1 KV heads
    "gemma4_26b_a4b_q8_0": (T.Q8_0, 403, dict(swa=(1, 1, 1, 1, 1, 0), n_swa=7, n_head_kv=(4, 1), n_ff=96,
                                              n_expert=8, n_expert_used=2, n_ff_exp=64, final_softcap=30.0)),
}


def write_gemma4_model(path: str | Path, name: str) -> Path:
    wtype, seed, o = GEMMA4_MODELS[name]
    return write_gemma4(path, wtype, seed=seed, **o)


def write_gemma4(path, wtype: T, *, swa: tuple[int, ...], seed: int = 0, n_embd: int = 64, n_head: int = 4,
                 n_head_kv: tuple[int, int] = (2, 1), head_dim: tuple[int, int] = (32, 64), n_ff: int = 128,
                 partial_rotary_full: float = 0.25, n_swa: int = 5, n_kv_shared: int = 0, n_embd_per_layer: int = 0,
                 double_wide: bool = False, k_eq_v: bool = False, tied: bool = True, final_softcap: float = 30.0,
                 n_expert: int = 0, n_expert_used: int = 0, n_ff_exp: int = 0) -> Path:  # fmt: skip
    """n_head_kv, head_dim: (sliding, global)."""
    n_layer = len(swa)
    n_kv_start = n_layer - n_kv_shared  # the first layer that reads another's KV
    hd = lambda il: head_dim[0] if swa[il] else head_dim[1]  # noqa: E731
    hkv = lambda il: n_head_kv[0] if swa[il] else n_head_kv[1]  # noqa: E731
    ff = [n_ff * 2 if double_wide and il >= n_kv_start else n_ff for il in range(n_layer)]
    m = ModelWriter(path, "gemma4", wtype, seed)
    w = m.writer
    p = "gemma4."
    w.add_uint32(p + "context_length", 8192)
    w.add_uint32(p + "embedding_length", n_embd)
    w.add_uint32(p + "block_count", n_layer)
    if double_wide:
        w.add_array(p + "feed_forward_length", ff)
    else:
        w.add_uint32(p + "feed_forward_length", n_ff)
    w.add_uint32(p + "attention.head_count", n_head)
    w.add_array(p + "attention.head_count_kv", [hkv(il) for il in range(n_layer)])
    w.add_uint32(p + "attention.key_length", head_dim[1])
    w.add_uint32(p + "attention.value_length", head_dim[1])
    w.add_uint32(p + "attention.key_length_swa", head_dim[0])
    w.add_uint32(p + "attention.value_length_swa", head_dim[0])
    w.add_uint32(p + "rope.dimension_count", head_dim[1])
    w.add_uint32(p + "rope.dimension_count_swa", head_dim[0])
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(p + "rope.freq_base", 1_000_000.0)
    w.add_float32(p + "rope.freq_base_swa", 10_000.0)
    w.add_uint32(p + "attention.sliding_window", n_swa)
    w.add_array(p + "attention.sliding_window_pattern", [bool(s) for s in swa])
    w.add_uint32(p + "attention.shared_kv_layers", n_kv_shared)
    w.add_uint32(p + "embedding_length_per_layer_input", n_embd_per_layer)
    w.add_float32(p + "final_logit_softcapping", final_softcap)
    if n_expert:
        w.add_uint32(p + "expert_count", n_expert)
        w.add_uint32(p + "expert_used_count", n_expert_used)
        w.add_uint32(p + "expert_feed_forward_length", n_ff_exp)
    m.placeholder_vocab(N_VOCAB, bos=2, eos=1)
    matrix, vector = m.matrix, m.vector
    matrix("token_embd.weight", N_VOCAB, n_embd, std=0.5)  # tied: logits of a few units, some capped
    vector("output_norm.weight", n_embd, 1.0, 0.1)
    if not tied:
        matrix("output.weight", N_VOCAB, n_embd, std=3.0 / math.sqrt(n_embd))
    n_rot_pairs = int(head_dim[1] * partial_rotary_full / 2)  # the converter's generate_extra_tensors
    w.add_tensor("rope_freqs.weight", np.array([1.0] * n_rot_pairs + [1e30] * (head_dim[1] // 2 - n_rot_pairs),
                                               np.float32))  # fmt: skip
    n_pl = n_embd_per_layer
    if n_pl:
        matrix("per_layer_token_embd.weight", N_VOCAB, n_pl * n_layer, std=1.0 / math.sqrt(n_pl))  # x sqrt(n_pl)
        matrix("per_layer_model_proj.weight", n_pl * n_layer, n_embd)
        vector("per_layer_proj_norm.weight", n_pl, 1.0, 0.1)
    for il in range(n_layer):
        b = f"blk.{il}."
        nq, nkv = n_head * hd(il), hkv(il) * hd(il)
        vector(b + "attn_norm.weight", n_embd, 1.0, 0.1)
        matrix(b + "attn_q.weight", nq, n_embd)
        matrix(b + "attn_k.weight", nkv, n_embd)  # in shared layers too (the checkpoint has them), unused
        if not (k_eq_v and not swa[il]):
            matrix(b + "attn_v.weight", nkv, n_embd)
        # attention scale is 1: QK-norm weights near head_dim^-1/4 scale q.k as 1/sqrt(head_dim) would (a
        # trained model's do; weights near 1 make softmax a hard argmax that flips on any rounding)
        qk = hd(il) ** -0.25
        vector(b + "attn_k_norm.weight", hd(il), qk, 0.1 * qk)
        vector(b + "attn_q_norm.weight", hd(il), qk, 0.1 * qk)
        matrix(b + "attn_output.weight", n_embd, nq)
        vector(b + "post_attention_norm.weight", n_embd, 1.0, 0.1)
        vector(b + "ffn_norm.weight", n_embd, 1.0, 0.1)
        matrix(b + "ffn_gate.weight", ff[il], n_embd)
        matrix(b + "ffn_up.weight", ff[il], n_embd)
        matrix(b + "ffn_down.weight", n_embd, ff[il])
        vector(b + "post_ffw_norm.weight", n_embd, 1.0, 0.1)
        if n_expert:
            matrix(b + "ffn_gate_inp.weight", n_expert, n_embd, std=4.0)  # decisive, as trained routers are
            vector(b + "ffn_gate_inp.scale", n_embd, 1.0, 0.2)
            vector(b + "pre_ffw_norm_2.weight", n_embd, 1.0, 0.1)
            vector(b + "post_ffw_norm_1.weight", n_embd, 1.0, 0.1)
            vector(b + "post_ffw_norm_2.weight", n_embd, 1.0, 0.1)
            # gate's rows, then up's
            m.experts(b + "ffn_gate_up_exps.weight", n_expert, 2 * n_ff_exp, n_embd, 1.0 / math.sqrt(n_embd), wtype)
            m.experts(b + "ffn_down_exps.weight", n_expert, n_embd, n_ff_exp, 1.0 / math.sqrt(n_ff_exp), wtype)
            w.add_tensor(b + "ffn_down_exps.scale", m.rng.uniform(0.5, 1.5, n_expert).astype(np.float32))
        if n_pl:
            matrix(b + "inp_gate.weight", n_pl, n_embd)
            matrix(b + "proj.weight", n_embd, n_pl)
            vector(b + "post_norm.weight", n_embd, 1.0, 0.1)
        w.add_tensor(b + "layer_output_scale.weight", np.array([m.rng.uniform(0.5, 1.0)], np.float32))
    return m.write()


def write_all(directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    return {name: write_gemma4_model(directory / f"{name}.gguf", name) for name in GEMMA4_MODELS}


def float_copies(directory: str | Path, paths: dict[str, Path]) -> dict[str, Path]:
    """Of every quantized model written (paths: write_all's), a copy with its weights in F32 (write_float_copy)."""
    return {name: write_float_copy(path, f"{path}.f32") for name, path in paths.items()
            if GEMMA4_MODELS[name][0] not in (T.F16, T.F32)}  # fmt: skip


def write_float_copy(src: str | Path, dst: str | Path) -> Path:
    """src with every tensor dequantized to F32 (gguf-py's dequantize): the same weights, so that llama.cpp
    runs it with float activations instead of Q8_0 ones. How far llama.cpp's logits on the two differ is
    the activation rounding's share of llama.cpp's own noise (tests/fixtures/make_gemma4_fixture.py)."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), "gemma4")
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vt = f.types[0]
        w.add_array(key, f.contents()) if vt == gguf.GGUFValueType.ARRAY else w.add_key_value(key, f.contents(), vt)
    for t in r.tensors:
        w.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)


def prompt_ids() -> np.ndarray:
    return np.random.default_rng(4444).integers(3, N_VOCAB, N_TOKENS).astype(np.int32)
