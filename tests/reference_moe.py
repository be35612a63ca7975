"""Test helpers for Mixture-of-Experts models: tiny random MoE GGUF files of four families, and an
independent float64 reference.

`write_tiny_moe(path, family, expert_type, tokenizer_from=...)` writes a small MoE model with gguf-py's
GGUFWriter and the real vocabulary of another GGUF file (SmolLM2's), so llama.cpp tokenizes and runs it.
Families: mixtral (general.architecture "llama" with llama.expert_count), qwen2moe (shared expert with a
sigmoid gate, q/k/v biases), qwen3moe (per-head QK-norm) and olmoe (full-width QK-norm).

`ReferenceMoE(path).logits(tokens)` reads the file with gguf-py's own reader and dequantizer (not
edgeinfer's) and runs the model as llama.cpp's graphs (src/models/*.cpp, build_moe_ffn in
src/llama-graph.cpp) describe it: float64, whole sequence at once, no cache, a loop per head and a loop
per token over its chosen experts. `routing(tokens)` gives the experts each token chose in each layer.
"""

from __future__ import annotations

import functools
import math
import struct
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from model_writer import ModelWriter
from reference_model import ReferenceModel, _field

MOE_FAMILIES = ("mixtral", "qwen2moe", "qwen3moe", "olmoe")
MOE_NEOX = {"qwen2moe", "qwen3moe", "olmoe"}  # llama_model_rope_type: NEOX; mixtral ("llama") is NORM
# build_moe_ffn's norm_w argument, hard-coded per family in llama.cpp's graphs
MOE_NORM_W = {"mixtral": True, "qwen2moe": False, "qwen3moe": True, "olmoe": False}
GATING_SOFTMAX, GATING_SIGMOID = 1, 2  # llama_expert_gating_func_type


def _arch(family: str) -> str:
    return "llama" if family == "mixtral" else family


def _family(arch: str) -> str:
    return "mixtral" if arch == "llama" else arch


# -- reading and writing tiny MoE models -----------------------------------------------------------------


class _Reader(gguf.GGUFReader):
    """gguf-py's GGUFReader, with arrays read in one step rather than element by element (its own way
    takes seconds for a 49152-token vocabulary). Same fields, parts and contents()."""

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        if V(raw_type) != V.ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        itype, n, offs = V(int(raw_itype[0])), int(alen[0]), orig_offs + 12
        parts: list[np.ndarray] = [raw_itype, alen]
        types = [V.ARRAY, itype] if n else [V.ARRAY]
        if itype == V.STRING:
            buf = memoryview(self.data)
            for _ in range(n):
                (slen,) = struct.unpack_from("=Q", buf, offs)
                parts.append(np.frombuffer(buf, np.uint64, 1, offs))
                parts.append(np.frombuffer(buf, np.uint8, slen, offs + 8))
                offs += 8 + slen
            return offs - orig_offs, parts, list(range(3, 2 + 2 * n, 2)), types
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is None:  # arrays of arrays: gguf-py's own way
            return super()._get_field_parts(orig_offs, raw_type)
        values = self._get(offs, nptype, n)
        return 12 + int(values.nbytes), parts + [values], [2] if n else [], types


@functools.lru_cache(maxsize=4)
def _tokenizer_kv(path: str) -> tuple[tuple[str, object, V, V | None], ...]:
    """Every tokenizer.* key of a GGUF file: (key, value, type, array element type)."""
    out = []
    for key, f in _Reader(path).fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == V.ARRAY else None
        value = f.contents()
        out.append((key, tuple(value) if isinstance(value, list) else value, vtype, sub))
    return tuple(out)


def _add_metadata(w: gguf.GGUFWriter, key: str, value) -> None:
    """bool -> bool, int -> uint32, float -> float32, str -> string."""
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, (int, np.integer)):
        w.add_uint32(key, int(value))
    elif isinstance(value, (float, np.floating)):
        w.add_float32(key, float(value))
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        raise TypeError(f"{key}: unsupported metadata value {value!r}")


def write_tiny_moe(
    path: str | Path,
    family: str,
    expert_type: T = T.Q8_0,
    *,
    tokenizer_from: str | Path | None,
    n_vocab: int = 512,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_ff_exp: int = 64,
    n_ff_shexp: int = 128,
    n_ctx_train: int = 512,
    rope_freq_base: float = 10000.0,
    seed: int = 0,
    router_ties=None,
    extra_metadata: dict | None = None,
) -> Path:
    """A random MoE model of `family` in `path`, with the vocabulary of the GGUF file tokenizer_from
    (None: a placeholder vocabulary of n_vocab tokens, enough for llama.cpp to load the file).

    Token embedding, untied output and attention matrices in Q8_0, norms and the router in F32, the experts
    as stacked 3-D tensors in expert_type (Q8_0, Q4_0, F16, F32). qwen2moe: F32 q/k/v biases and a Q8_0
    shared expert of n_ff_shexp. olmoe: n_head_kv is forced to n_head (llama.cpp's attn_k_norm is {n_embd}).
    router_ties: (layer, expert_a, expert_b) triples; expert_b's router row is made a copy of expert_a's,
    so their router logits tie exactly. extra_metadata: {key suffix: value} added under "{arch}."
    (bool, int -> uint32, float -> float32, str), e.g. {"expert_weights_norm": True}."""
    if family not in MOE_FAMILIES:
        raise ValueError(f"unknown MoE family {family!r}")
    arch = _arch(family)
    if family == "olmoe":
        n_head_kv = n_head
    head_dim = n_embd // n_head
    tok_kv = ()
    if tokenizer_from is not None:
        tok_kv = _tokenizer_kv(str(tokenizer_from))
        n_vocab = len(next(v for k, v, _, _ in tok_kv if k == "tokenizer.ggml.tokens"))

    m = ModelWriter(path, arch, T.Q8_0, seed)  # the matrices in Q8_0, the experts in expert_type
    w = m.writer
    p = arch + "."
    w.add_string("general.name", f"tiny {family} moe")
    w.add_uint32(p + "context_length", n_ctx_train)
    w.add_uint32(p + "embedding_length", n_embd)
    w.add_uint32(p + "block_count", n_layer)
    if family in ("mixtral", "olmoe"):
        w.add_uint32(p + "feed_forward_length", n_ff_exp)  # these read the expert size from n_ff
    else:  # as the converters do: the dense size (unused here) and the expert size apart
        w.add_uint32(p + "feed_forward_length", n_ff_exp + n_ff_exp // 2)
        w.add_uint32(p + "expert_feed_forward_length", n_ff_exp)
    if family == "qwen2moe":
        w.add_uint32(p + "expert_shared_feed_forward_length", n_ff_shexp)
    w.add_uint32(p + "expert_count", n_expert)
    w.add_uint32(p + "expert_used_count", n_expert_used)
    w.add_uint32(p + "attention.head_count", n_head)
    w.add_uint32(p + "attention.head_count_kv", n_head_kv)
    w.add_uint32(p + "attention.key_length", head_dim)
    w.add_uint32(p + "attention.value_length", head_dim)
    w.add_uint32(p + "rope.dimension_count", head_dim)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(p + "rope.freq_base", rope_freq_base)
    for key, value in (extra_metadata or {}).items():
        _add_metadata(w, p + key, value)
    if tokenizer_from is None:  # a placeholder vocabulary of n_vocab tokens "<i>", as write_tiny_model's (benchmarks)
        m.placeholder_vocab(n_vocab)
    for key, value, vtype, sub in tok_kv:
        w.add_key_value(key, list(value) if vtype == V.ARRAY else value, vtype, sub_type=sub)
    matrix, vector = m.matrix, m.vector

    def experts(name: str, n_out: int, n_in: int, std: float) -> None:
        m.experts(name, n_expert, n_out, n_in, std, expert_type)

    matrix("token_embd.weight", n_vocab, n_embd, std=1.0)
    vector("output_norm.weight", n_embd, 1.0, 0.1)
    matrix("output.weight", n_vocab, n_embd, std=3.0 / math.sqrt(n_embd))
    for il in range(n_layer):
        b = f"blk.{il}."
        vector(b + "attn_norm.weight", n_embd, 1.0, 0.1)
        matrix(b + "attn_q.weight", n_head * head_dim, n_embd)
        matrix(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        matrix(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        matrix(b + "attn_output.weight", n_embd, n_head * head_dim)
        if family == "qwen2moe":
            vector(b + "attn_q.bias", n_head * head_dim, 0.0, 0.3)
            vector(b + "attn_k.bias", n_head_kv * head_dim, 0.0, 0.3)
            vector(b + "attn_v.bias", n_head_kv * head_dim, 0.0, 0.3)
        if family == "qwen3moe":
            vector(b + "attn_q_norm.weight", head_dim, 1.0, 0.2)
            vector(b + "attn_k_norm.weight", head_dim, 1.0, 0.2)
        if family == "olmoe":
            vector(b + "attn_q_norm.weight", n_head * head_dim, 1.0, 0.2)
            vector(b + "attn_k_norm.weight", n_head_kv * head_dim, 1.0, 0.2)
        vector(b + "ffn_norm.weight", n_embd, 1.0, 0.1)
        # router: logits of std ~2.5, so the choice varies from token to token and the weights are uneven
        router = m.normal((n_expert, n_embd), 2.5 / math.sqrt(n_embd))
        for il_, a, e in router_ties or []:
            if il_ == il:
                router[e] = router[a]
        w.add_tensor(b + "ffn_gate_inp.weight", router)
        experts(b + "ffn_gate_exps.weight", n_ff_exp, n_embd, 1.0 / math.sqrt(n_embd))
        experts(b + "ffn_up_exps.weight", n_ff_exp, n_embd, 1.0 / math.sqrt(n_embd))
        experts(b + "ffn_down_exps.weight", n_embd, n_ff_exp, 2.0 / math.sqrt(n_ff_exp))
        if family == "qwen2moe":
            w.add_tensor(b + "ffn_gate_inp_shexp.weight", m.normal((n_embd,)))
            matrix(b + "ffn_gate_shexp.weight", n_ff_shexp, n_embd)
            matrix(b + "ffn_up_shexp.weight", n_ff_shexp, n_embd)
            matrix(b + "ffn_down_shexp.weight", n_embd, n_ff_shexp, std=2.0 / math.sqrt(n_ff_shexp))
    return m.write()


# Tiny MoE models that llama.cpp runs too (tests/fixtures/logits_moe.npz): name -> (family, expert_type,
# options). Every family with Q8_0 experts; Q4_0, F16 and F32 experts; one expert per token (no
# renormalization for qwen2moe: the weight is the bare probability), every expert per token, and routers
# with exactly tied rows (which expert wins a tie at the top-k boundary). The seeds are picked so that on
# MOE_PROMPT no token's choice of experts is within llama.cpp's 8-bit-activation noise of flipping: the
# float64 reference with ggml's Q8_0 rounding of activations added routes every token as the plain one does
# (and then matches llama.cpp's logits to 1e-4). With other seeds a router margin of even 0.09 was seen to
# flip, and a flipped expert moves that token's logits by several units.
MOE_LLAMACPP: dict[str, tuple[str, T, dict]] = {
    "mixtral_q8_0": ("mixtral", T.Q8_0, dict(seed=33101)),
    "qwen2moe_q8_0": ("qwen2moe", T.Q8_0, dict(seed=102)),
    "qwen3moe_q8_0": ("qwen3moe", T.Q8_0, dict(seed=6103)),
    "olmoe_q8_0": ("olmoe", T.Q8_0, dict(seed=7104)),
    "mixtral_q4_0": ("mixtral", T.Q4_0, dict(seed=9105)),
    "qwen3moe_q4_0": ("qwen3moe", T.Q4_0, dict(seed=30106, n_expert=16, n_expert_used=4)),
    "qwen2moe_top1": ("qwen2moe", T.Q8_0, dict(seed=1107, n_expert=4, n_expert_used=1)),
    "mixtral_all_f16": ("mixtral", T.F16, dict(seed=108, n_expert=4, n_expert_used=4)),
    "olmoe_f32_top3": ("olmoe", T.F32, dict(seed=14109, n_expert=6, n_expert_used=3)),
    "mixtral_ties": ("mixtral", T.Q8_0, dict(seed=1110, router_ties=[(0, 1, 2), (0, 4, 6), (1, 0, 3), (1, 5, 7)])),
}
MOE_PROMPT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, lit the great lamp, and wrote "
    "the wind and the weather in a worn leather book before he slept."
)


def write_moe_llamacpp(directory: str | Path, tokenizer_from: str | Path) -> dict[str, Path]:
    """Write every MOE_LLAMACPP model into directory."""
    directory = Path(directory)
    return {
        name: write_tiny_moe(directory / f"{name}.gguf", family, etype, tokenizer_from=tokenizer_from, **kw)
        for name, (family, etype, kw) in MOE_LLAMACPP.items()
    }


# -- the float64 reference -------------------------------------------------------------------------------


class ReferenceMoE(ReferenceModel):
    """float64, whole sequence, no cache: logits(tokens) -> (n, n_vocab); routing(tokens) -> per layer the
    (n, n_expert_used) experts each token chose, best first.

    Routing as build_moe_ffn: router logits x @ ffn_gate_inp.T; probabilities by softmax (sigmoid where
    {arch}.expert_gating_func == 2); the expert_used_count most probable experts, best first, a tie going
    to the lower index (as llama.cpp does: its CPU argsort is std::sort, an insertion sort for up to 16
    experts, so stable -- mixtral_ties checks it);
    their probabilities as weights, divided by their sum where the family normalizes (mixtral, qwen3moe;
    {arch}.expert_weights_norm overrides), times {arch}.expert_weights_scale where present. Output:
    sum of w_i * down_i(silu(gate_i x) * up_i x) over the chosen experts in order; qwen2moe adds
    sigmoid(x @ ffn_gate_inp_shexp) * its shared expert. Note that llama.cpp itself reads neither
    expert_weights_norm, expert_weights_scale nor expert_gating_func for these four families."""

    def __init__(self, path: str | Path):  # ReferenceModel's fields, read with the faster _Reader
        r = _Reader(str(path))
        self.arch = arch = _field(r, "general.architecture")
        g = lambda key, default=None: _field(r, f"{arch}.{key}", default)  # noqa: E731
        self.family = _family(arch)
        self.n_embd = g("embedding_length")
        self.n_layer = g("block_count")
        self.n_head = g("attention.head_count")
        self.n_head_kv = g("attention.head_count_kv", self.n_head)
        self.head_dim = g("attention.key_length", self.n_embd // self.n_head)
        self.n_rot = g("rope.dimension_count", self.head_dim)
        self.eps = g("attention.layer_norm_rms_epsilon")
        self.freq_base = g("rope.freq_base", 10000.0)
        self.scaling, self.freq_scale, self.n_swa = "none", 1.0, 0
        self.n_expert = g("expert_count")
        self.n_expert_used = g("expert_used_count")
        self.norm_w = bool(g("expert_weights_norm", MOE_NORM_W[self.family]))
        self.w_scale = g("expert_weights_scale", 0.0)
        self.gating = g("expert_gating_func", GATING_SOFTMAX)
        self.w: dict[str, np.ndarray] = {}
        for t in r.tensors:
            values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            self.w[t.name] = values.astype(np.float64).reshape(tuple(int(d) for d in reversed(t.shape)))
        self.w.setdefault("output.weight", self.w["token_embd.weight"])

    def rope(self, x: np.ndarray, positions, base: float, freq_scale: float) -> np.ndarray:
        """x (n, n_heads, head_dim): rotate pairs (2i, 2i+1) (mixtral, NORM) or (i, i + n_rot/2) (NEOX)."""
        out = x.copy()
        half = self.n_rot // 2
        for t, pos in enumerate(positions):
            for i, theta in enumerate(self.rope_angles(pos, base, freq_scale)):
                a, b = (i, i + half) if self.family in MOE_NEOX else (2 * i, 2 * i + 1)
                c, s = math.cos(theta), math.sin(theta)
                out[t, :, a] = x[t, :, a] * c - x[t, :, b] * s
                out[t, :, b] = x[t, :, a] * s + x[t, :, b] * c
        return out

    def attention(self, x: np.ndarray, il: int, positions) -> np.ndarray:
        w, b = self.w, f"blk.{il}."
        n, hd = len(x), self.head_dim
        q = x @ w[b + "attn_q.weight"].T + w.get(b + "attn_q.bias", 0.0)
        k = x @ w[b + "attn_k.weight"].T + w.get(b + "attn_k.bias", 0.0)
        v = x @ w[b + "attn_v.weight"].T + w.get(b + "attn_v.bias", 0.0)
        if self.family == "olmoe":  # one RMS norm over all heads together, before the split into heads
            q = self.rms_norm(q, w[b + "attn_q_norm.weight"])
            k = self.rms_norm(k, w[b + "attn_k_norm.weight"])
        q, k, v = q.reshape(n, self.n_head, hd), k.reshape(n, self.n_head_kv, hd), v.reshape(n, self.n_head_kv, hd)
        if self.family == "qwen3moe":  # per head
            q = self.rms_norm(q, w[b + "attn_q_norm.weight"])
            k = self.rms_norm(k, w[b + "attn_k_norm.weight"])
        q, k = self.rope(q, positions, self.freq_base, 1.0), self.rope(k, positions, self.freq_base, 1.0)
        out = np.zeros((n, self.n_head, hd))
        for h in range(self.n_head):
            kv = h // (self.n_head // self.n_head_kv)
            for t in range(n):
                visible = [s for s in range(n) if positions[s] <= positions[t]]
                scores = np.array([q[t, h] @ k[s, kv] for s in visible]) / math.sqrt(hd)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                out[t, h] = sum(pi * v[s, kv] for pi, s in zip(p, visible))
        return out.reshape(n, -1) @ w[b + "attn_output.weight"].T

    def route(self, x: np.ndarray, il: int) -> tuple[list[int], list[float]]:
        """One token's x (n_embd,): its chosen experts (best first; a tie goes to the lower index) and
        their weights."""
        router = self.w[f"blk.{il}.ffn_gate_inp.weight"]
        logits = np.array([float(np.dot(router[e], x)) for e in range(self.n_expert)])  # equal rows tie exactly
        if self.gating == GATING_SIGMOID:
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
        chosen = sorted(range(self.n_expert), key=lambda e: (-probs[e], e))[: self.n_expert_used]
        weights = [float(probs[e]) for e in chosen]
        if self.norm_w:
            total = sum(weights)
            weights = [wi / total for wi in weights]
        if self.w_scale:
            weights = [wi * self.w_scale for wi in weights]
        return chosen, weights

    def expert(self, x: np.ndarray, il: int, e: int) -> np.ndarray:
        w, b = self.w, f"blk.{il}."
        gate = w[b + "ffn_gate_exps.weight"][e] @ x
        up = w[b + "ffn_up_exps.weight"][e] @ x
        return w[b + "ffn_down_exps.weight"][e] @ (gate / (1 + np.exp(-gate)) * up)

    def feed_forward(self, x: np.ndarray, il: int) -> np.ndarray:
        w, b = self.w, f"blk.{il}."
        out = np.zeros_like(x)
        chosen_all = []
        for t in range(len(x)):
            chosen, weights = self.route(x[t], il)
            chosen_all.append(chosen)
            for e, wi in zip(chosen, weights):
                out[t] += wi * self.expert(x[t], il, e)
        if b + "ffn_gate_inp_shexp.weight" in w:  # qwen2moe's shared expert, behind a sigmoid gate
            gate = x @ w[b + "ffn_gate_shexp.weight"].T
            shared = (gate / (1 + np.exp(-gate)) * (x @ w[b + "ffn_up_shexp.weight"].T)) @ w[b + "ffn_down_shexp.weight"].T
            out += shared / (1 + np.exp(-(x @ w[b + "ffn_gate_inp_shexp.weight"])))[:, None]
        self.last_routing.append(np.array(chosen_all, dtype=np.int64).reshape(len(x), self.n_expert_used))
        return out

    def logits(self, tokens, positions=None) -> np.ndarray:
        """(n, n_vocab); the routing it took is left in self.last_routing."""
        self.last_routing: list[np.ndarray] = []
        return super().logits(tokens, positions)

    def routing(self, tokens, positions=None) -> list[np.ndarray]:
        """Per layer, the (n, n_expert_used) experts each token chose, best first."""
        self.logits(tokens, positions)
        return list(self.last_routing)
