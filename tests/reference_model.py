"""Test helpers: tiny random GGUF models of each architecture, and an independent float64 reference.

`write_tiny_model(path, arch, wtype, ...)` writes a small model with gguf-py's GGUFWriter: random weights
in F32, F16, a legacy block format (quantized with edgeinfer.quant's reference quantizers) or a k-quant
(random blocks with sensible scales).

`ReferenceModel(path).logits(tokens)` reads the file with gguf-py's own reader and dequantizer (not
edgeinfer's) and runs the architecture as the papers and llama.cpp's graphs describe it: float64, whole
sequence at once, no cache, a loop per head. Slow and obvious on purpose; it shares no code with
edgeinfer.nn or edgeinfer.arch.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from model_writer import ModelWriter

ARCHS = ("llama", "gemma3", "qwen2", "qwen3")
NEOX_ARCHS = {"gemma3", "qwen2", "qwen3"}  # llama.cpp's llama_model_rope_type: LLAMA_ROPE_TYPE_NEOX


# -- writing tiny models ---------------------------------------------------------------------------------


def write_tiny_model(
    path: str | Path,
    arch: str,
    wtype: T = T.F32,
    *,
    tied: bool = True,
    n_vocab: int = 256,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int | None = None,
    n_ff: int = 128,
    n_ctx_train: int = 256,
    rope_freq_base: float = 10000.0,
    rope_scaling: dict | None = None,
    rope_freqs: bool = False,
    n_swa: int = 0,
    seed: int = 0,
    vocab: bool = False,
) -> Path:
    """A random model of `arch` in `path`. rope_scaling: {"type": "linear"|"yarn", "factor": f,
    "original_context_length": n}; rope_freqs: add Llama 3's rope_freqs.weight; n_swa: gemma3's window;
    vocab: add a placeholder gpt2-style vocabulary (token i is "<i>"), enough for llama.cpp to load the file."""
    head_dim = head_dim or n_embd // n_head
    m = ModelWriter(path, arch, wtype, seed)
    w = m.writer
    p = arch + "."
    w.add_uint32(p + "context_length", n_ctx_train)
    w.add_uint32(p + "embedding_length", n_embd)
    w.add_uint32(p + "block_count", n_layer)
    w.add_uint32(p + "feed_forward_length", n_ff)
    w.add_uint32(p + "attention.head_count", n_head)
    w.add_uint32(p + "attention.head_count_kv", n_head_kv)
    w.add_uint32(p + "attention.key_length", head_dim)
    w.add_uint32(p + "attention.value_length", head_dim)
    w.add_uint32(p + "rope.dimension_count", head_dim)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(p + "rope.freq_base", rope_freq_base)
    if rope_scaling:
        w.add_string(p + "rope.scaling.type", rope_scaling["type"])
        w.add_float32(p + "rope.scaling.factor", rope_scaling["factor"])
        if "original_context_length" in rope_scaling:
            w.add_uint32(p + "rope.scaling.original_context_length", rope_scaling["original_context_length"])
    if arch == "gemma3":
        w.add_uint32(p + "attention.sliding_window", n_swa)
    if vocab:
        m.placeholder_vocab(n_vocab)
    matrix, vector = m.matrix, m.vector
    matrix("token_embd.weight", n_vocab, n_embd, std=1.0 if arch != "gemma3" else 1.0 / math.sqrt(n_embd))
    vector("output_norm.weight", n_embd, 1.0, 0.1)
    if not tied:
        matrix("output.weight", n_vocab, n_embd, std=3.0 / math.sqrt(n_embd))
    if rope_freqs:
        w.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, head_dim // 2).astype(np.float32))
    for il in range(n_layer):
        b = f"blk.{il}."
        vector(b + "attn_norm.weight", n_embd, 1.0, 0.1)
        matrix(b + "attn_q.weight", n_head * head_dim, n_embd)
        matrix(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        matrix(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        matrix(b + "attn_output.weight", n_embd, n_head * head_dim)
        if arch == "qwen2":
            vector(b + "attn_q.bias", n_head * head_dim, 0.0, 0.3)
            vector(b + "attn_k.bias", n_head_kv * head_dim, 0.0, 0.3)
            vector(b + "attn_v.bias", n_head_kv * head_dim, 0.0, 0.3)
        if arch in ("qwen3", "gemma3"):
            vector(b + "attn_q_norm.weight", head_dim, 1.0, 0.2)
            vector(b + "attn_k_norm.weight", head_dim, 1.0, 0.2)
        if arch == "gemma3":
            vector(b + "post_attention_norm.weight", n_embd, 1.0, 0.1)
            vector(b + "post_ffw_norm.weight", n_embd, 1.0, 0.1)
        vector(b + "ffn_norm.weight", n_embd, 1.0, 0.1)
        matrix(b + "ffn_gate.weight", n_ff, n_embd)
        matrix(b + "ffn_up.weight", n_ff, n_embd)
        matrix(b + "ffn_down.weight", n_embd, n_ff)
    return m.write()


# Tiny models that llama.cpp runs too (tests/fixtures/logits_tiny.npz): name -> (arch, wtype, options).
# They check what the real files here cannot: qwen2's biases, qwen3's QK-norm, YaRN, rope_freqs, and
# gemma3's sliding window inside a short sequence.
LLAMACPP_TINY: dict[str, tuple[str, T, dict]] = {
    "llama_q4_0_untied": ("llama", T.Q4_0, dict(tied=False)),
    "llama_yarn_f16": ("llama", T.F16, dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_context_length": 64})),
    "llama_linear_q8_0": ("llama", T.Q8_0, dict(rope_scaling={"type": "linear", "factor": 2.0})),
    "llama_rope_freqs_q8_0": ("llama", T.Q8_0, dict(rope_freqs=True, rope_freq_base=500000.0)),
    "qwen2_q8_0": ("qwen2", T.Q8_0, dict()),
    "qwen3_q8_0_untied": ("qwen3", T.Q8_0, dict(tied=False)),
    "gemma3_q8_0": ("gemma3", T.Q8_0, dict(n_layer=6, n_swa=5, head_dim=32)),
    "gemma3_q4_k": ("gemma3", T.Q4_K, dict(n_layer=6, n_swa=5, n_embd=256, n_ff=512, head_dim=64)),
}
LLAMACPP_TINY_TOKENS = 20


def write_llamacpp_tiny(directory: str | Path) -> dict[str, Path]:
    """Write every LLAMACPP_TINY model (with a placeholder vocabulary) into directory."""
    directory = Path(directory)
    return {
        name: write_tiny_model(directory / f"{name}.gguf", arch, wtype, vocab=True, seed=i, **kw)
        for i, (name, (arch, wtype, kw)) in enumerate(LLAMACPP_TINY.items())
    }


# -- the float64 reference -----------------------------------------------------------------------------


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


class ReferenceModel:
    """float64, whole sequence, no cache: logits(tokens) -> (n, n_vocab)."""

    def __init__(self, path: str | Path):
        r = gguf.GGUFReader(str(path))
        self.arch = arch = _field(r, "general.architecture")
        g = lambda key, default=None: _field(r, f"{arch}.{key}", default)  # noqa: E731
        self.n_embd = g("embedding_length")
        self.n_layer = g("block_count")
        self.n_head = g("attention.head_count")
        self.n_head_kv = g("attention.head_count_kv", self.n_head)
        self.head_dim = g("attention.key_length", self.n_embd // self.n_head)
        self.n_rot = g("rope.dimension_count", self.head_dim)
        self.eps = g("attention.layer_norm_rms_epsilon")
        self.freq_base = g("rope.freq_base", 10000.0)
        self.scaling = g("rope.scaling.type", "linear")
        factor = g("rope.scaling.factor", 0.0)
        self.freq_scale = 1.0 / factor if factor else 1.0
        self.n_ctx_orig = g("rope.scaling.original_context_length", g("context_length"))
        self.n_swa = g("attention.sliding_window", 0)
        self.w: dict[str, np.ndarray] = {}
        for t in r.tensors:
            values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            self.w[t.name] = values.astype(np.float64).reshape(tuple(int(d) for d in reversed(t.shape)))
        self.w.setdefault("output.weight", self.w["token_embd.weight"])

    # building blocks, each as its paper or llama.cpp's graph states it

    def rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope_angles(self, pos: int, base: float, freq_scale: float) -> np.ndarray:
        """Angle of each rotated pair at position pos, (n_rot/2,)."""
        angles = []
        for i in range(self.n_rot // 2):
            theta = pos * base ** (-2.0 * i / self.n_rot)
            if "rope_freqs.weight" in self.w:
                theta /= self.w["rope_freqs.weight"][i]
            if self.scaling == "yarn":  # YaRN: ramp between interpolation and extrapolation
                corr = lambda rot: self.n_rot * math.log(self.n_ctx_orig / (rot * 2 * math.pi)) / (2 * math.log(base))  # noqa: E731
                low, high = max(0.0, math.floor(corr(32.0))), min(self.n_rot - 1.0, math.ceil(corr(1.0)))
                ramp = 1.0 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))
                theta = freq_scale * theta * (1 - ramp) + theta * ramp
            else:
                theta = freq_scale * theta
            angles.append(theta)
        return np.array(angles)

    def rope(self, x: np.ndarray, positions, base: float, freq_scale: float) -> np.ndarray:
        """x (n, n_heads, head_dim): rotate pairs (2i, 2i+1) (llama) or (i, i + n_rot/2) (NEOX)."""
        out = x.copy()
        mscale = 1.0 + 0.1 * math.log(1.0 / freq_scale) if self.scaling == "yarn" else 1.0
        half = self.n_rot // 2
        for t, pos in enumerate(positions):
            for i, theta in enumerate(self.rope_angles(pos, base, freq_scale)):
                a, b = (i, i + half) if self.arch in NEOX_ARCHS else (2 * i, 2 * i + 1)
                c, s = math.cos(theta) * mscale, math.sin(theta) * mscale
                out[t, :, a] = x[t, :, a] * c - x[t, :, b] * s
                out[t, :, b] = x[t, :, a] * s + x[t, :, b] * c
        return out

    def attention(self, x: np.ndarray, il: int, positions) -> np.ndarray:
        w, b = self.w, f"blk.{il}."
        n, hd = len(x), self.head_dim
        q = x @ w[b + "attn_q.weight"].T + w.get(b + "attn_q.bias", 0.0)
        k = x @ w[b + "attn_k.weight"].T + w.get(b + "attn_k.bias", 0.0)
        v = x @ w[b + "attn_v.weight"].T + w.get(b + "attn_v.bias", 0.0)
        q, k, v = q.reshape(n, self.n_head, hd), k.reshape(n, self.n_head_kv, hd), v.reshape(n, self.n_head_kv, hd)
        if b + "attn_q_norm.weight" in w and self.arch in ("qwen3", "gemma3"):
            q = self.rms_norm(q, w[b + "attn_q_norm.weight"])
            k = self.rms_norm(k, w[b + "attn_k_norm.weight"])
        local = self.arch == "gemma3" and self.n_swa > 0 and il % 6 != 5
        base, freq_scale = (10000.0, 1.0) if local else (self.freq_base, self.freq_scale)
        q, k = self.rope(q, positions, base, freq_scale), self.rope(k, positions, base, freq_scale)
        out = np.zeros((n, self.n_head, hd))
        for h in range(self.n_head):
            kv = h // (self.n_head // self.n_head_kv)
            for t in range(n):
                visible = [s for s in range(n) if positions[s] <= positions[t]]
                if local:
                    visible = [s for s in visible if positions[t] - positions[s] < self.n_swa]
                scores = np.array([q[t, h] @ k[s, kv] for s in visible]) / math.sqrt(hd)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                out[t, h] = sum(pi * v[s, kv] for pi, s in zip(p, visible))
        return out.reshape(n, -1) @ w[b + "attn_output.weight"].T

    def feed_forward(self, x: np.ndarray, il: int) -> np.ndarray:
        w, b = self.w, f"blk.{il}."
        gate = x @ w[b + "ffn_gate.weight"].T
        if self.arch == "gemma3":
            act = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
        else:
            act = gate / (1 + np.exp(-gate))
        return (act * (x @ w[b + "ffn_up.weight"].T)) @ w[b + "ffn_down.weight"].T

    def logits(self, tokens, positions=None) -> np.ndarray:
        w = self.w
        positions = list(range(len(tokens))) if positions is None else list(positions)
        x = w["token_embd.weight"][np.asarray(tokens)]
        if self.arch == "gemma3":
            x = x * math.sqrt(self.n_embd)
        for il in range(self.n_layer):
            b = f"blk.{il}."
            if self.arch == "gemma3":  # sandwich norms
                h = self.attention(self.rms_norm(x, w[b + "attn_norm.weight"]), il, positions)
                x = x + self.rms_norm(h, w[b + "post_attention_norm.weight"])
                h = self.feed_forward(self.rms_norm(x, w[b + "ffn_norm.weight"]), il)
                x = x + self.rms_norm(h, w[b + "post_ffw_norm.weight"])
            else:
                x = x + self.attention(self.rms_norm(x, w[b + "attn_norm.weight"]), il, positions)
                x = x + self.feed_forward(self.rms_norm(x, w[b + "ffn_norm.weight"]), il)
        return self.rms_norm(x, w["output_norm.weight"]) @ w["output.weight"].T


def agreement(logits: np.ndarray, fixture) -> dict:
    """Our logits (n, n_vocab) against llama.cpp's top-k per position: argmax agreement (a near-tie within
    half a logit, in either model, counts as agreement), and |ours - llama.cpp| at llama.cpp's top ids."""
    top_ids, top_vals = fixture["top_ids"].astype(np.int64), fixture["top_logits"]
    ours_at_top = np.take_along_axis(logits, top_ids, axis=-1)  # (n, k)
    ours_best = logits.argmax(-1)
    exact = ours_best == top_ids[:, 0]
    we_tie = logits.max(-1) - ours_at_top[:, 0] <= 0.5  # llama.cpp's choice is near our best
    in_top = top_ids == ours_best[:, None]  # our choice among llama.cpp's top k ...
    they_tie = (in_top & (top_vals[:, :1] - top_vals <= 0.5)).any(-1)  # ... and near its best
    diff = np.abs(ours_at_top - top_vals)
    return {
        "argmax_exact": float(exact.mean()),
        "argmax": float((exact | we_tie | they_tie).mean()),
        "top1_mean": float(diff[:, 0].mean()),
        "top1_max": float(diff[:, 0].max()),
        "topk_mean": float(diff.mean()),
    }
