"""The small operations of a layer, compiled: RMSNorm, RoPE, attention over the KV cache, gated
activations. Same shapes and meaning as edgeinfer.kernels.numpy_ops (their oracle); one compiled call
each, so that a decode step pays microseconds, not the dozens of numpy calls the same math costs.

RMSNorm sums squares in float64 and scales in float32, as ggml_compute_forward_rms_norm_f32 does.
Attention: two passes per (query, head): scores into a scratch row, then softmax and the weighted sum
of V; the mask comes from positions (causal, optional sliding window), no (n, n_kv) mask is built.
Every (query, head) pair is computed by the same code whatever the batch, so a token's result does not
depend on the batch it came in.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..numpy_ops import kv_head_dim
from .kvrows import kv_array, kv_put, kv_row
from .simd import f32_from_bits, f32x8_splat, f32x8_zero, fma_f32x8, hsum_f32x8, load_f32x8, store_f32x8

# fast-math without nnan / ninf: the exp and the masked softmax rely on inf compares and -inf scores
FAST = {"reassoc", "contract", "arcp", "nsz", "afn"}
PARALLEL_MIN_WORK = 1 << 15  # below this many multiply-adds, one thread (a parallel region costs more)
ACT_SILU, ACT_GELU_TANH, ACT_SWIGLU_OAI = 0, 1, 2
ACTS = {"silu": ACT_SILU, "gelu_tanh": ACT_GELU_TANH, "swiglu_oai": ACT_SWIGLU_OAI}
_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
_OAI_ALPHA, _OAI_LIMIT = np.float32(1.702), np.float32(7.0)  # numpy_ops.SWIGLU_OAI_ALPHA, _LIMIT


# -- RMSNorm -------------------------------------------------------------------------------------------


@njit(cache=True)
def _rms_scale(x, i, eps):
    # a separate function without fastmath (LLVM may still inline it; its instructions keep their
    # strict flags): 1 / sqrt(mean + eps) must not become an approximate reciprocal in one loop and
    # not in another
    d = x.shape[1]
    return np.float32(1.0) / np.float32(math.sqrt(np.float32(_sum_squares(x, i) / d) + eps))


@njit(cache=True)
def _sum_squares(x, i):
    # squares in float32 summed in float64, as ggml_compute_forward_rms_norm_f32, in one fixed order:
    # eight running sums (vector lanes), added pairwise. No reassociation is allowed here, so a row's
    # sum is the same bits whichever loop (serial, parallel) and batch it is computed in: a request's
    # result must not depend on what else runs beside it (continuous batching).
    d = x.shape[1]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    j = 0
    while j + 8 <= d:
        s0 += np.float64(x[i, j] * x[i, j])
        s1 += np.float64(x[i, j + 1] * x[i, j + 1])
        s2 += np.float64(x[i, j + 2] * x[i, j + 2])
        s3 += np.float64(x[i, j + 3] * x[i, j + 3])
        s4 += np.float64(x[i, j + 4] * x[i, j + 4])
        s5 += np.float64(x[i, j + 5] * x[i, j + 5])
        s6 += np.float64(x[i, j + 6] * x[i, j + 6])
        s7 += np.float64(x[i, j + 7] * x[i, j + 7])
        j += 8
    t = 0.0
    while j < d:
        t += np.float64(x[i, j] * x[i, j])
        j += 1
    return (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + t


@njit(cache=True, inline="always")
def _rms_row(x, w, eps, out, i):  # strict float semantics: the same bits in every loop (see above)
    d = x.shape[1]
    scale = _rms_scale(x, i, eps)
    for j in range(d):
        out[i, j] = (x[i, j] * scale) * w[j]


@njit(cache=True, nogil=True)
def _rms_norm(x, w, eps, out):
    for i in range(x.shape[0]):
        _rms_row(x, w, eps, out, i)


@njit(cache=True, nogil=True, parallel=True)
def _rms_norm_par(x, w, eps, out):
    for i in prange(x.shape[0]):
        _rms_row(x, w, eps, out, i)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (..., d) -> x / sqrt(mean(x^2) + eps) * weight, a new float32 array (any layout of x)."""
    if x.ndim != 2:
        out = rms_norm(np.ascontiguousarray(x).reshape(-1, x.shape[-1]), weight, eps)
        return out.reshape(x.shape)
    out = np.empty(x.shape, np.float32)
    if x.size >= PARALLEL_MIN_WORK:
        _rms_norm_par(x, weight, eps, out)
    else:
        _rms_norm(x, weight, eps, out)
    return out


# -- RoPE ----------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _rope(x, positions, cos_t, sin_t, n_rot, neox, out):
    n, h, d = x.shape
    half = n_rot // 2
    for t in range(n):
        p = positions[t]
        if p < 0 or p >= cos_t.shape[0]:
            raise ValueError("rope: a position outside the tables")
        for hh in range(h):
            for j in range(n_rot, d):
                out[t, hh, j] = x[t, hh, j]
            for i in range(half):
                c = cos_t[p, i]
                s = sin_t[p, i]
                if neox:
                    a, b = i, i + half
                else:
                    a, b = 2 * i, 2 * i + 1
                x0 = x[t, hh, a]
                x1 = x[t, hh, b]
                out[t, hh, a] = x0 * c - x1 * s
                out[t, hh, b] = x0 * s + x1 * c


def check_rope_contract(d: int, n: int, positions, cos_t, sin_t, n_rot: int) -> None:
    """The shape contract of the rope kernels, checked once per call (they index without bounds
    checks): n_rot even and at most the head size d, tables of n_rot / 2 columns, one position per token.
    Each position is checked against the tables' rows in the kernels themselves (a compiled loop: a
    numpy min/max here cost more than the rope of a decode step)."""
    n_rot = int(n_rot)
    if n_rot < 0 or n_rot % 2 or n_rot > d:
        raise ValueError(f"rope: n_rot {n_rot} must be even and at most the head size {d}")
    if cos_t.ndim != 2 or sin_t.shape != cos_t.shape or cos_t.shape[1] < n_rot // 2:
        raise ValueError(f"rope: cos/sin tables {cos_t.shape}/{sin_t.shape} do not cover n_rot {n_rot}")
    if len(positions) != n:
        raise ValueError("rope: one position per token")


def rope(x, positions, cos_t, sin_t, n_rot: int, neox: bool) -> np.ndarray:
    """x (n, h, d) rotated by the tables' rows at positions -> a new float32 array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_rope_contract(x.shape[2], x.shape[0], positions, cos_t, sin_t, n_rot)  # hardening (issue 18)
    out = np.empty_like(x)
    _rope(x, positions, cos_t, sin_t, n_rot, neox, out)
    return out


# -- Q/K/V after their matmul: QK-norm, rope, K and V into the cache ----------------------------------


@njit(cache=True, inline="always")
def _norm_rope_head(src, o, d, w, has_norm, eps, c_row, s_row, n_rot, neox, dst):
    """dst[:d] = rope(rms_norm(src[o : o + d]) * w) (the norm only when has_norm): one head of one token,
    with the arithmetic of _rms_row and _rope."""
    if has_norm:
        acc = 0.0
        for j in range(d):
            v = np.float64(src[o + j])
            acc += v * v
        scale = np.float32(1.0) / np.float32(math.sqrt(np.float32(acc / d) + eps))
        for j in range(d):
            dst[j] = (src[o + j] * scale) * w[j]
    else:
        for j in range(d):
            dst[j] = src[o + j]
    half = n_rot // 2
    for i in range(half):
        c = c_row[i]
        s = s_row[i]
        if neox:
            a, b = i, i + half
        else:
            a, b = 2 * i, 2 * i + 1
        x0 = dst[a]
        x1 = dst[b]
        dst[a] = x0 * c - x1 * s
        dst[b] = x0 * s + x1 * c


@njit(cache=True, nogil=True)
def _qkv_store(qkv, n_head, n_head_kv, head_dim, head_dim_v, positions, cos_t, sin_t, n_rot, neox,
               q_norm, k_norm, has_norm, eps, k_store, v_store, cells, q_out):  # fmt: skip
    nq = n_head * head_dim
    nk = n_head_kv * head_dim
    k_row = np.empty(head_dim, np.float32)  # a K row, normed and rotated in float32, then stored
    for t in range(qkv.shape[0]):
        row = qkv[t]
        if positions[t] < 0 or positions[t] >= cos_t.shape[0]:
            raise ValueError("qkv_store: a position outside the rope tables")
        c_row = cos_t[positions[t]]
        s_row = sin_t[positions[t]]
        for h in range(n_head):
            _norm_rope_head(row, h * head_dim, head_dim, q_norm, has_norm, eps, c_row, s_row, n_rot, neox, q_out[t, h])
        cell = cells[t]
        if cell < 0 or cell >= k_store.shape[0] or cell >= v_store.shape[0]:
            raise ValueError("qkv_store: a cell outside the storage")
        for g in range(n_head_kv):
            _norm_rope_head(row, nq + g * head_dim, head_dim, k_norm, has_norm, eps, c_row, s_row, n_rot, neox, k_row)
            kv_put(k_store, cell, g, k_row)
            o = nq + nk + g * head_dim_v
            kv_put(v_store, cell, g, row[o : o + head_dim_v])


_NO_NORM = np.ones(1, np.float32)


def _check_qkv_contract(qkv, n_head, n_head_kv, head_dim, head_dim_v, positions, cos, sin, n_rot, q_norm, k_norm,
                        k, v) -> None:  # fmt: skip
    if qkv.ndim != 2 or qkv.shape[1] != n_head * head_dim + n_head_kv * (head_dim + head_dim_v):
        raise ValueError(f"qkv_store: qkv {qkv.shape} does not hold {n_head} + {n_head_kv} heads of {head_dim} "
                         f"and {n_head_kv} of {head_dim_v}")  # fmt: skip
    check_rope_contract(head_dim, qkv.shape[0], positions, cos, sin, n_rot)
    for w in (q_norm, k_norm):
        if w is not None and (w.ndim != 1 or w.shape[0] < head_dim):
            raise ValueError(f"qkv_store: a QK-norm weight of shape {w.shape} for heads of {head_dim}")
    if (k.ndim != 3 or v.ndim != 3 or k.shape[1] < n_head_kv or v.shape[1] < n_head_kv
            or kv_head_dim(k) != head_dim or kv_head_dim(v) != head_dim_v):  # fmt: skip
        raise ValueError(f"qkv_store: K/V storage {k.shape}/{v.shape} does not fit {n_head_kv} heads of "
                         f"{head_dim}/{head_dim_v}")  # fmt: skip


def qkv_store(qkv, n_head, n_head_kv, head_dim, head_dim_v, positions, cos, sin, n_rot, neox,
              q_norm, k_norm, eps, k, v, cells) -> np.ndarray:  # fmt: skip
    """qkv (n, H D + Hkv D + Hkv Dv), the output of the stacked Q/K/V matmul -> q (n, H, D), normed
    (q_norm, k_norm: RMSNorm weights (D,) or None) and rotated; K (normed, rotated) and V written into
    the cache storage k (n_cells, Hkv, row), v (n_cells, Hkv, row_v) at rows cells (n,), rounded to its
    format (float32, float16 or Q8_0 blocks: numpy_ops.kv_store)."""
    cells = np.ascontiguousarray(cells, dtype=np.int32)
    if cells.shape[0] != qkv.shape[0]:
        raise ValueError("qkv_store: one cell per token")
    qkv = np.ascontiguousarray(qkv, dtype=np.float32)
    _check_qkv_contract(qkv, n_head, n_head_kv, head_dim, head_dim_v, positions, cos, sin, n_rot, q_norm, k_norm,
                        k, v)  # hardening (issue 18): the kernel indexes without bounds checks  # fmt: skip
    q = np.empty((qkv.shape[0], n_head, head_dim), np.float32)
    has_norm = q_norm is not None
    _qkv_store(qkv, n_head, n_head_kv, head_dim, head_dim_v, positions, cos, sin, n_rot, neox,
               q_norm if has_norm else _NO_NORM, k_norm if has_norm else _NO_NORM, has_norm,
               np.float32(eps), kv_array(k), kv_array(v), cells, q)  # fmt: skip
    return q


# -- exp, vectorizable --------------------------------------------------------------------------------


@njit(cache=True, inline="always", fastmath=FAST)
def _exp32(x):
    """e^x in float32 (relative error ~2e-7) for -87.3 <= x <= 88 (0 below: a masked -inf gives 0;
    inf from 88.03 on, a hair before float32 overflows at 88.72).
    Branch-free arithmetic that LLVM vectorizes (libm's expf is one call per value): x = n ln2 + r,
    e^r by its Taylor polynomial on |r| <= ln2 / 2, 2^n built in the exponent bits."""
    xc = min(max(x, np.float32(-87.3)), np.float32(88.7))
    n = np.floor(xc * np.float32(1.4426950408889634) + np.float32(0.5))  # np.floor vectorizes, math.floor not
    r = xc - n * np.float32(0.693145751953125) - n * np.float32(1.428606765330187e-06)
    p = np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    y = p * f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    y = np.float32(0.0) if x < np.float32(-87.3) else y
    return np.float32(np.inf) if x > np.float32(88.7) else y


# -- tanh, vectorizable ------------------------------------------------------------------------------

# tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= TANH_CLAMP (beyond it tanh is 1 in float32), x itself below
# TANH_TINY: the rational form Eigen's generic_fast_tanh_float uses (a few ulp). native/attention.c has
# the same constants and operations (tanh_scalar, tanh8).
TANH_CLAMP, TANH_TINY = np.float32(7.90531110763549805), np.float32(0.0004)
_P13, _P11 = np.float32(-2.76076847742355e-16), np.float32(2.00018790482477e-13)
_P9, _P7 = np.float32(-8.60467152213735e-11), np.float32(5.12229709037114e-08)
_P5, _P3, _P1 = np.float32(1.48572235717979e-05), np.float32(6.37261928875436e-04), np.float32(4.89352455891786e-03)
_Q6, _Q4 = np.float32(1.19825839466702e-06), np.float32(1.18534705686654e-04)
_Q2, _Q0 = np.float32(2.26843463243900e-03), np.float32(4.89352518554385e-03)


@njit(cache=True, inline="always", fastmath=FAST)
def _tanh32(x):
    """tanh(x) in float32 (within 6 ulp of the result), branch-free: LLVM vectorizes a loop of it."""
    xc = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    x2 = xc * xc
    p = ((((((_P13 * x2 + _P11) * x2 + _P9) * x2 + _P7) * x2 + _P5) * x2 + _P3) * x2 + _P1) * xc
    q = ((_Q6 * x2 + _Q4) * x2 + _Q2) * x2 + _Q0
    y = p / q
    return x if abs(x) < TANH_TINY else y


# -- attention -----------------------------------------------------------------------------------------


@njit(cache=True, inline="always", fastmath=FAST)
def _softmax_row(scores, n_kv, qp, kv_pos, n_swa, scale, sink, softcap):
    """scores[:n_kv] (raw q.k) -> softmax of s = scale * q.k over the cells query position qp sees, 0 for
    the others, with one more logit `sink` (unscaled; -inf: none) in the max and the denominator; each s
    soft-capped to softcap * tanh(s / softcap) first when softcap > 0 (Gemma 2); returns False when it
    sees no cell."""
    best = -np.inf
    inv_cap = np.float32(1.0) / softcap if softcap > 0 else np.float32(0.0)
    for j in range(n_kv):
        delta = qp - kv_pos[j]
        visible = delta >= 0 and (n_swa <= 0 or delta < n_swa)
        s = scores[j] * scale
        if softcap > 0:
            s = _tanh32(s * inv_cap) * softcap
        s = s if visible else -np.inf
        scores[j] = s
        best = max(best, s)
    if best == -np.inf:
        return False
    best = max(best, sink)
    total = np.float32(0.0)
    for j in range(n_kv):
        e = _exp32(scores[j] - best)
        scores[j] = e
        total += e
    total += _exp32(sink - best)  # exactly 0 for no sink (-inf)
    inv = np.float32(1.0) / total
    for j in range(n_kv):
        scores[j] *= inv
    return True


@njit(cache=True, inline="always", fastmath=FAST)
def _dot_row(a, ao, b, n):
    """a[ao : ao + n] . b[:n] (1-D float32): 8 float lanes (n a multiple of 8), then their pairwise sum."""
    acc = f32x8_zero()
    for e in range(0, n, 8):
        acc = fma_f32x8(load_f32x8(a, ao + e), load_f32x8(b, e), acc)
    return hsum_f32x8(acc)


@njit(cache=True, inline="always", fastmath=FAST)
def _axpy_row(p, x, y, yo, n):
    """y[yo : yo + n] += p * x[:n] (1-D float32, n a multiple of 8), one rounding per lane (fma)."""
    pv = f32x8_splat(p)
    for e in range(0, n, 8):
        store_f32x8(y, yo + e, fma_f32x8(pv, load_f32x8(x, e), load_f32x8(y, yo + e)))


@njit(cache=True, inline="always", fastmath=FAST)
def _attend_tg(q, k, v, q_pos, kv_pos, cells, n_swa, scale, softcap, sinks, t, g, scores, acc, k_buf, v_buf, out):
    """Query t, the query heads of KV head g: they read each K and V row once, together (rows of cells
    stream from memory in order, each converted to float32 as it is read: kv_row); masked softmax per
    head (with its sink logit sinks[h], -inf for none); the rows of V summed with its weights. The
    sequence's token j is row cells[j] of k and v.
    q (n, H, D), out (n, H * Dv), acc (group * Dv,); head sizes that are multiples of 8 run on 8-lane
    vectors (the same code for every batch: a token's result does not depend on it)."""
    n_head, head_dim = q.shape[1], q.shape[2]
    n_kv = kv_pos.shape[0]
    n_head_kv, head_dim_v = v.shape[1], v_buf.shape[0]
    group = n_head // n_head_kv
    qf = q.reshape(-1)
    vec = head_dim % 8 == 0 and head_dim_v % 8 == 0
    for j in range(n_kv):
        kr = kv_row(k, cells[j], g, k_buf)
        for a in range(group):
            qo = (t * n_head + g * group + a) * head_dim
            if vec:
                scores[a, j] = _dot_row(qf, qo, kr, head_dim)
            else:
                s = np.float32(0.0)
                for e in range(head_dim):
                    s += qf[qo + e] * kr[e]
                scores[a, j] = s
    acc[:] = 0.0
    for a in range(group):
        _softmax_row(scores[a], n_kv, q_pos[t], kv_pos, n_swa, scale, sinks[g * group + a], softcap)
    for j in range(n_kv):
        vr = kv_row(v, cells[j], g, v_buf)
        for a in range(group):
            p = scores[a, j]
            if vec:
                _axpy_row(p, vr, acc, a * head_dim_v, head_dim_v)
            else:
                for e in range(head_dim_v):
                    acc[a * head_dim_v + e] += p * vr[e]
    out[t, g * group * head_dim_v : (g + 1) * group * head_dim_v] = acc


@njit(cache=True, nogil=True)
def _check_cells(cells, n_cells):
    for j in range(cells.shape[0]):
        if cells[j] < 0 or cells[j] >= n_cells:
            raise ValueError("attention: a cell outside k and v")


@njit(cache=True, nogil=True, fastmath=FAST)
def _attention_serial(q, k, v, q_pos, kv_pos, cells, n_swa, scale, softcap, sinks, out):
    n_kv = kv_pos.shape[0]
    n_head_kv, head_dim_v = v.shape[1], out.shape[1] // q.shape[1]
    group = q.shape[1] // n_head_kv
    scores = np.empty((group, n_kv), np.float32)
    acc = np.empty(group * head_dim_v, np.float32)
    k_buf = np.empty(q.shape[2], np.float32)
    v_buf = np.empty(head_dim_v, np.float32)
    for t in range(q.shape[0]):
        for g in range(n_head_kv):
            _attend_tg(q, k, v, q_pos, kv_pos, cells, n_swa, scale, softcap, sinks, t, g, scores, acc, k_buf, v_buf,
                       out)  # fmt: skip


@njit(cache=True, nogil=True, fastmath=FAST, parallel=True)
def _attention_parallel(q, k, v, q_pos, kv_pos, cells, n_swa, scale, softcap, sinks, out):
    n_kv = kv_pos.shape[0]
    n_head_kv, head_dim_v = v.shape[1], out.shape[1] // q.shape[1]
    group = q.shape[1] // n_head_kv
    n_items = q.shape[0] * n_head_kv
    n_chunks = min(n_items, 256)
    for c in prange(n_chunks):
        scores = np.empty((group, n_kv), np.float32)
        acc = np.empty(group * head_dim_v, np.float32)
        k_buf = np.empty(q.shape[2], np.float32)
        v_buf = np.empty(head_dim_v, np.float32)
        for i in range(c * n_items // n_chunks, (c + 1) * n_items // n_chunks):
            _attend_tg(q, k, v, q_pos, kv_pos, cells, n_swa, scale, softcap, sinks, i // n_head_kv, i % n_head_kv,
                       scores,
                       acc, k_buf, v_buf, out)  # fmt: skip


PARALLEL_MIN_CELLS = 4096  # query heads x cells from which attention runs on all threads
_KV_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8))


def _kv_storage(x, what: str) -> np.ndarray:
    """K or V as the kernels read it: float32, float16 or Q8_0 rows (uint8) as they are (C-contiguous),
    anything else as float32."""
    if x.dtype not in _KV_DTYPES:
        x = x.astype(np.float32)
    x = kv_array(np.ascontiguousarray(x))
    if x.dtype == np.uint8 and x.shape[-1] % 34:
        raise ValueError(f"attention: {what} of uint8 must be rows of Q8_0 blocks (34 bytes each)")
    return x


def attention(q, k, v, q_pos, kv_pos, n_swa: int, scale: float, cells=None, sinks=None,
              softcap: float = 0.0) -> np.ndarray:  # fmt: skip
    """q (n, H, D) float32, k (n_cells, Hkv, row), v (n_cells, Hkv, row_v) K/V storage (float32,
    float16 or Q8_0 rows: numpy_ops) -> (n, H * Dv) float32; token j of the sequence (kv_pos[j]) is
    row cells[j] of k and v, or row j when cells is None. The rows are converted as they are read.
    sinks: float32 (H,), one more logit per query head in its softmax (numpy_ops.attention), or None;
    softcap > 0: every score s soft-capped to softcap * tanh(s / softcap) (Gemma 2), 0: off."""
    n, n_head, _ = q.shape
    n_kv = len(kv_pos)
    if cells is None:
        if k.shape[0] != n_kv or v.shape[0] != n_kv:
            raise ValueError("attention: k and v need one row per kv position (or give cells)")
        cells = np.arange(n_kv, dtype=np.int32)
    else:
        cells = np.ascontiguousarray(cells, dtype=np.int32)
        if cells.shape[0] != n_kv:
            raise ValueError("attention: one cell per kv position")
        _check_cells(cells, min(k.shape[0], v.shape[0]))
    head_dim_v = kv_head_dim(v)
    if kv_head_dim(k) != q.shape[2]:
        raise ValueError(f"attention: q has heads of {q.shape[2]} values, k of {kv_head_dim(k)}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    k, v = _kv_storage(k, "k"), _kv_storage(v, "v")
    q_pos = np.ascontiguousarray(q_pos, dtype=np.int32)
    kv_pos = np.ascontiguousarray(kv_pos, dtype=np.int32)
    if sinks is None:
        sinks = _no_sinks(n_head)
    else:
        sinks = np.ascontiguousarray(sinks, dtype=np.float32)
        if sinks.shape != (n_head,):
            raise ValueError(f"attention: one sink per query head ({n_head}), not {sinks.shape}")
    if not softcap >= 0:
        raise ValueError(f"attention: softcap must be 0 (off) or positive, not {softcap}")
    out = np.empty((n, n_head * head_dim_v), np.float32)
    args = (q, k, v, q_pos, kv_pos, cells, n_swa, np.float32(scale), np.float32(softcap), sinks, out)
    if n * n_head * n_kv >= PARALLEL_MIN_CELLS and n * v.shape[1] > 1:
        _attention_parallel(*args)
    else:
        _attention_serial(*args)
    return out


_NO_SINKS: dict[int, np.ndarray] = {}


def _no_sinks(n_head: int) -> np.ndarray:
    """-inf per head: a sink no softmax sees (e^-inf adds exactly 0)."""
    z = _NO_SINKS.get(n_head)
    if z is None:
        z = _NO_SINKS[n_head] = np.full(n_head, -np.inf, np.float32)
        z.flags.writeable = False
    return z


# -- gated activations ---------------------------------------------------------------------------------


@njit(cache=True, inline="always", fastmath=FAST)
def _glu_row(gu, f, act, out, i):
    # two loops: the exp alone, then the rest (fused into one, LLVM leaves the loop scalar)
    g = gu[i, :f]
    u = gu[i, f:]
    o = out[i]
    # both as x / (1 + e^-y) up, accurate at both ends (1 + tanh(v) loses every digit for v << 0)
    if act == ACT_SILU:  # x sigmoid(x) up, as ggml_vec_swiglu_f32
        for j in range(f):
            o[j] = _exp32(-g[j])
        for j in range(f):
            o[j] = g[j] / (np.float32(1.0) + o[j]) * u[j]
    elif act == ACT_SWIGLU_OAI:  # min(g, 7) sigmoid(1.702 min(g, 7)) (clip(u, -7, 7) + 1), ggml_swiglu_oai
        for j in range(f):
            o[j] = _exp32(-_OAI_ALPHA * min(g[j], _OAI_LIMIT))
        for j in range(f):
            x = min(g[j], _OAI_LIMIT)
            y = min(max(u[j], -_OAI_LIMIT), _OAI_LIMIT)
            o[j] = x / (np.float32(1.0) + o[j]) * (y + np.float32(1.0))
    else:  # 0.5 x (1 + tanh(v)) up = x / (1 + e^(-2v)) up, v = sqrt(2/pi) (x + 0.044715 x^3)
        for j in range(f):
            x = g[j]
            o[j] = _exp32(np.float32(-2.0) * _SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x))
        for j in range(f):
            o[j] = g[j] / (np.float32(1.0) + o[j]) * u[j]


@njit(cache=True, nogil=True, fastmath=FAST)
def _glu(gu, act, out):
    f = out.shape[1]
    for i in range(gu.shape[0]):
        _glu_row(gu, f, act, out, i)


@njit(cache=True, nogil=True, fastmath=FAST, parallel=True)
def _glu_par(gu, act, out):
    f = out.shape[1]
    for i in prange(gu.shape[0]):
        _glu_row(gu, f, act, out, i)


def glu(gu: np.ndarray, act: str) -> np.ndarray:
    """gu (n, 2 f) = [gate | up] -> act(gate) * up (n, f)."""
    n, f2 = gu.shape
    out = np.empty((n, f2 // 2), np.float32)
    if gu.size >= PARALLEL_MIN_WORK and n > 1:
        _glu_par(gu, ACTS[act], out)
    else:
        _glu(gu, ACTS[act], out)
    return out


# -- Mixture-of-Experts routing --------------------------------------------------------------------------

GATE_SOFTMAX, GATE_SIGMOID, GATE_SOFTMAX_WEIGHT = 0, 1, 2
GATES = {"softmax": GATE_SOFTMAX, "sigmoid": GATE_SIGMOID, "softmax_weight": GATE_SOFTMAX_WEIGHT}


@njit(cache=True, nogil=True)
def _moe_route(logits, n_used, gating, norm_weights, scale, bias, chosen, weights):
    n, n_expert = logits.shape
    probs = np.empty(n_expert, np.float32)
    select = np.empty(n_expert, np.float32)
    taken = np.zeros(n_expert, np.bool_)
    for t in range(n):
        row = logits[t]
        if gating == GATE_SOFTMAX_WEIGHT:  # pick by the logits, weigh by their softmax below
            for j in range(n_expert):
                probs[j] = row[j]
        elif gating == GATE_SIGMOID:
            for j in range(n_expert):
                probs[j] = np.float32(1.0) / (np.float32(1.0) + np.exp(-row[j]))
        else:
            m = row[0]
            for j in range(1, n_expert):
                m = max(m, row[j])
            total = np.float32(0.0)
            for j in range(n_expert):
                probs[j] = np.exp(row[j] - m)
                total += probs[j]
            for j in range(n_expert):
                probs[j] = probs[j] / total
        for j in range(n_expert):
            select[j] = probs[j] + bias[j]
            taken[j] = False
        total = np.float32(0.0)
        for i in range(n_used):  # the largest not yet taken; equal values: the lower index
            best = -1
            for j in range(n_expert):
                if not taken[j] and (best < 0 or select[j] > select[best]):
                    best = j
            taken[best] = True
            chosen[t, i] = best
            weights[t, i] = probs[best]
            total += probs[best]
        if gating == GATE_SOFTMAX_WEIGHT:  # softmax over the k chosen logits (the first is their max)
            m = weights[t, 0]
            total = np.float32(0.0)
            for i in range(n_used):
                weights[t, i] = np.exp(weights[t, i] - m)
                total += weights[t, i]
            for i in range(n_used):
                weights[t, i] = weights[t, i] / total
            total = np.float32(1.0)
        for i in range(n_used):
            w = weights[t, i] / total if norm_weights else weights[t, i]
            weights[t, i] = w * scale


def moe_route(logits, n_used: int, gating: str, norm_weights: bool, scale: float, bias=None):
    """numpy_ops.moe_route, compiled: one pass per token, no sort (k selections of the largest)."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    n, n_expert = logits.shape
    chosen = np.empty((n, n_used), np.int32)
    weights = np.empty((n, n_used), np.float32)
    bias = _no_bias(n_expert) if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    _moe_route(logits, n_used, GATES[gating], norm_weights, np.float32(scale), bias, chosen, weights)
    return chosen, weights


_NO_BIAS: dict[int, np.ndarray] = {}


def _no_bias(n: int) -> np.ndarray:
    z = _NO_BIAS.get(n)
    if z is None:
        z = _NO_BIAS[n] = np.zeros(n, np.float32)
        z.flags.writeable = False
    return z
