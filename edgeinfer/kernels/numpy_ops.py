"""The small operations of a transformer layer in plain numpy: the reference backend's, and the oracle
the compiled versions (edgeinfer.kernels.numba.ops) are tested against.

Shapes (float32 unless said):
    rms_norm(x (..., d), weight (d,), eps)                        x / sqrt(mean(x^2) + eps) * weight
    rope(x (n, h, d), positions int (n,), cos, sin (n_pos, n_rot/2), n_rot, neox)    rotated copy
    attention(q (n, H, D), k (n_cells, Hkv, D), v (n_cells, Hkv, Dv), q_pos (n,), kv_pos (n_kv,), n_swa,
        scale, cells=None, softcap=0, sinks=None) -> (n, H * Dv); scores cap * tanh(s / cap) when softcap > 0
        (Gemma 2); sinks (H,): one more logit per query head in each softmax, attended by no value (gpt-oss's
        attention sinks: e^sink joins the denominator); the sequence's token j is row cells[j] of k and v (a paged
        cache's block table; None: row j, n_cells = n_kv); query i sees token j when kv_pos[j] <= q_pos[i]
        (and q_pos[i] - kv_pos[j] < n_swa when n_swa > 0); query head h reads KV head h // (H / Hkv)
    qkv_store(qkv (n, H D + Hkv D + Hkv Dv), ..., k, v, cells) -> q (n, H, D): QK-norm (optional) and
        rope of the stacked Q/K/V matmul's output, K and V written into the cache storage at rows cells (n,)
    K/V storage (k, v of attention and qkv_store) is float32, float16, or uint8 rows of Q8_0 blocks
        (head_dim / 32 blocks of 34 bytes): edgeinfer.nn.kv's KV_TYPES. kv_rows_f32 reads rows of any of
        them as float32, kv_store writes float32 rows into one (rounding them: f16 to nearest even, q8_0
        as quantize_row_q8_0_ref)
    glu(gu (n, 2 f), act) -> act(gu[:, :f]) * gu[:, f:]            act: "silu" or "gelu_tanh"; "swiglu_oai":
        min(g, 7) sigmoid(1.702 min(g, 7)) (clip(u, -7, 7) + 1), OpenAI's clamped SwiGLU (ggml_swiglu_oai)
    moe_route(logits (n, n_expert), n_used, gating, norm_weights, scale, bias) -> chosen int32 (n, k),
        weights (n, k): a Mixture-of-Experts router's choice, llama.cpp's build_moe_ffn
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType

from ..quant import dequantize, quantize
from .base import BackendDefaults

QUERY_CHUNK = 256  # queries scored at once: bounds the (Hkv, group, chunk, n_kv) score buffer


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    ms = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return x * (1.0 / np.sqrt(ms + np.float32(eps))) * weight


def rope(x: np.ndarray, positions: np.ndarray, cos_t: np.ndarray, sin_t: np.ndarray, n_rot: int, neox: bool):
    cos = cos_t[positions][:, None, :]  # (n, 1, half)
    sin = sin_t[positions][:, None, :]
    out = x.copy()
    half = n_rot // 2
    if neox:
        x0, x1 = x[..., :half], x[..., half:n_rot]
        out[..., :half] = x0 * cos - x1 * sin
        out[..., half:n_rot] = x0 * sin + x1 * cos
    else:
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def kv_head_dim(store: np.ndarray) -> int:
    """Values per row of K/V storage (..., row): the row itself, or its Q8_0 blocks' values."""
    return store.shape[-1] // 34 * 32 if store.dtype == np.uint8 else store.shape[-1]


def kv_rows_f32(rows: np.ndarray) -> np.ndarray:
    """K/V storage rows (..., row) as float32 (..., head_dim): exact (every stored value is a float32)."""
    if rows.dtype == np.uint8:
        shape = (*rows.shape[:-1], kv_head_dim(rows))
        return dequantize(rows, GGMLQuantizationType.Q8_0, shape)
    return rows.astype(np.float32, copy=False)


def kv_store(store: np.ndarray, cells, x: np.ndarray) -> None:
    """store[cells] = x: float32 rows (n, ..., head_dim) rounded to the storage's format."""
    x = np.asarray(x, np.float32)
    store[cells] = quantize(x, GGMLQuantizationType.Q8_0) if store.dtype == np.uint8 else x


def qkv_store(qkv, n_head, n_head_kv, head_dim, head_dim_v, positions, cos, sin, n_rot, neox,
              q_norm, k_norm, eps, k_store, v, cells) -> np.ndarray:  # fmt: skip
    n = qkv.shape[0]
    nq, nk = n_head * head_dim, n_head_kv * head_dim
    q = qkv[:, :nq].reshape(n, n_head, head_dim)
    k = qkv[:, nq : nq + nk].reshape(n, n_head_kv, head_dim)
    if q_norm is not None:
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    q = rope(q, positions, cos, sin, n_rot, neox)
    cells = np.asarray(cells, np.int64)
    kv_store(k_store, cells, rope(k, positions, cos, sin, n_rot, neox))
    kv_store(v, cells, qkv[:, nq + nk :].reshape(n, n_head_kv, head_dim_v))
    return np.ascontiguousarray(q)


def causal_mask(q_pos: np.ndarray, kv_pos: np.ndarray, n_swa: int = 0) -> np.ndarray:
    """bool (n, n_kv): True where query i may attend to cell j (llama.cpp's LLAMA_SWA_TYPE_STANDARD)."""
    delta = q_pos[:, None].astype(np.int64) - kv_pos[None, :]
    mask = delta >= 0
    if n_swa > 0:
        mask &= delta < n_swa
    return mask


def attention(q, k, v, q_pos, kv_pos, n_swa: int, scale: float, cells=None, softcap: float = 0.0,
              sinks=None) -> np.ndarray:  # fmt: skip
    if cells is not None:
        k, v = k[cells], v[cells]
    k, v = kv_rows_f32(k), kv_rows_f32(v)  # the slow oracle: the sequence's rows gathered, then converted
    n, n_head, head_dim = q.shape
    n_kv, n_head_kv, head_dim_v = v.shape
    group = n_head // n_head_kv
    mask = causal_mask(q_pos, kv_pos, n_swa)
    lo = int(np.argmax(mask.any(axis=0)))  # a sliding window leaves a prefix no query reads
    k = k[lo:].transpose(1, 0, 2)  # (Hkv, n_kv, D)
    v = v[lo:].transpose(1, 0, 2)
    mask = mask[:, lo:]
    qg = q.reshape(n, n_head_kv, group, head_dim).transpose(1, 2, 0, 3)  # (Hkv, group, n, D)
    sink = None if sinks is None else np.asarray(sinks, np.float32).reshape(n_head_kv, group, 1, 1)
    out = np.empty((n_head_kv, group, n, head_dim_v), np.float32)
    k_tr = k.transpose(0, 2, 1)[:, None]  # (Hkv, 1, D, n_kv)
    for c0 in range(0, n, QUERY_CHUNK):
        c1 = min(c0 + QUERY_CHUNK, n)
        scores = qg[:, :, c0:c1] @ k_tr  # (Hkv, group, chunk, n_kv)
        scores *= np.float32(scale)
        if softcap:  # Gemma 2: cap * tanh(scores / cap), before the mask and softmax
            scores = np.tanh(scores * np.float32(1.0 / softcap)) * np.float32(softcap)
        scores[:, :, ~mask[c0:c1]] = -np.inf
        best = scores.max(axis=-1, keepdims=True)  # (Hkv, group, chunk, 1)
        if sink is not None:  # the sink's logit (unscaled) joins the max and the denominator
            best = np.maximum(best, sink)
        scores -= best
        np.exp(scores, out=scores)
        total = scores.sum(axis=-1, keepdims=True)
        if sink is not None:
            total += np.exp(sink - best)
        scores /= total
        out[:, :, c0:c1] = scores @ v[:, None]
    return out.transpose(2, 0, 1, 3).reshape(n, n_head * head_dim_v)


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), in float64 (exact to float32 rounding at both ends)."""
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        return (x64 / (1.0 + np.exp(-x64))).astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (ggml_gelu), in float64."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64**3)))).astype(np.float32)


SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT = 1.702, 7.0  # llama.cpp's build_moe_ffn (constants there too)


def swiglu_oai(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """OpenAI's clamped SwiGLU (ggml_swiglu_oai): x sigmoid(alpha x) (y + 1), x = min(g, limit),
    y = clip(u, -limit, limit); in float64."""
    x = np.minimum(g.astype(np.float64), SWIGLU_OAI_LIMIT)
    y = np.clip(u.astype(np.float64), -SWIGLU_OAI_LIMIT, SWIGLU_OAI_LIMIT)
    with np.errstate(over="ignore"):
        return (x / (1.0 + np.exp(-SWIGLU_OAI_ALPHA * x)) * (y + 1.0)).astype(np.float32)


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh}
GLU_ACTIVATIONS = (*ACTIVATIONS, "swiglu_oai")


def glu(gu: np.ndarray, act: str) -> np.ndarray:
    f = gu.shape[-1] // 2
    if act == "swiglu_oai":
        return swiglu_oai(gu[:, :f], gu[:, f:])
    return ACTIVATIONS[act](gu[:, :f]) * gu[:, f:]


def moe_route(logits, n_used: int, gating: str, norm_weights: bool, scale: float, bias=None):
    """Router logits float32 (n, n_expert) -> (chosen int32 (n, k), weights float32 (n, k)).

    probs = softmax(logits) ("softmax") or sigmoid(logits) ("sigmoid") or the logits themselves
    ("softmax_weight"); the k = n_used experts with the largest probs (plus `bias` (n_expert,), DeepSeek V3's,
    which picks but does not weigh), largest first, equal values in index order; weights = their probs
    ("softmax_weight": the softmax of their k logits, gpt-oss), divided by their sum when norm_weights, times
    scale."""
    logits = np.asarray(logits, dtype=np.float32)
    if gating == "softmax_weight":
        probs = logits
    elif gating == "softmax":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    elif gating == "sigmoid":
        probs = np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))
    else:
        raise ValueError(f"unknown gating function {gating!r}")
    select = probs if bias is None else probs + bias
    chosen = np.argsort(-select, axis=1, kind="stable")[:, :n_used]  # stable: ties in index order
    weights = np.take_along_axis(probs, chosen, axis=1)
    if gating == "softmax_weight":  # chosen in descending order: column 0 holds the max
        weights = np.exp(weights - weights[:, :1])
        weights /= weights.sum(axis=1, keepdims=True)
    if norm_weights:
        weights = weights / weights.sum(axis=1, keepdims=True)
    if scale != 1.0:
        weights = weights * np.float32(scale)
    return chosen.astype(np.int32), weights.astype(np.float32, copy=False)


class NumpyOps(BackendDefaults):
    """The small ops as backend methods (mixed into the reference backend)."""

    def rms_norm(self, x, weight, eps):
        return rms_norm(x, weight, eps)

    def rope(self, x, positions, cos, sin, n_rot, neox):
        return rope(x, positions, cos, sin, n_rot, neox)

    def qkv_store(self, qkv, heads, positions, cos, sin, k, v, cells):
        h = heads
        return qkv_store(qkv, h.n_head, h.n_head_kv, h.head_dim, h.head_dim_v, positions, cos, sin, h.n_rot, h.neox,
                         h.q_norm, h.k_norm, h.eps, k, v, cells)  # fmt: skip

    def attention(self, q, k, v, q_pos, kv_pos, n_swa, scale, cells=None):
        return attention(q, k, v, q_pos, kv_pos, n_swa, scale, cells)

    def attention_sinks(self, items, n_swa, scale, sinks):
        return [attention(q, k, v, qp, kp, n_swa, scale, c, sinks=sinks) for q, k, v, qp, kp, c in items]

    def attention_softcap(self, items, n_swa, scale, softcap):
        return [attention(q, k, v, qp, kp, n_swa, scale, c, softcap=softcap) for q, k, v, qp, kp, c in items]

    def glu(self, gu, act):
        return glu(gu, act)

    def moe_route(self, logits, n_used, gating, norm_weights, scale, bias=None):
        return moe_route(logits, n_used, gating, norm_weights, scale, bias)
