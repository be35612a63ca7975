"""K-quants: super-blocks of QK_K = 256 values in 16 or 8 sub-blocks, with scales quantized too.

Each matches ggml-quants.c's `dequantize_row_<type>` bit for bit. Q8_K is the activation format of the
K-quant dot products (a float32 scale, 8-bit quants, and their sums in groups of 16); it is also
encoded here, like `quantize_row_q8_K_ref`.

The quantizers are ports of `quantize_row_<type>_ref` (what llama.cpp runs without an importance
matrix) that give the same bytes: every step in float32, in the C's order of operations, sums
accumulated one term at a time as the C loops do, and `nearest_int`'s magic-number rounding. The C
searches a scale per sub-block in a loop; here each step of that loop runs on every sub-block of a
chunk at once, with the sub-blocks along the last axis: `xt` has shape (values per sub-block,
sub-blocks), so `xt[i]` is value i of every sub-block, and a C loop over i is a Python loop over rows.
"""

from __future__ import annotations

import numpy as np
from gguf.constants import QK_K, GGMLQuantizationType

from .base import QuantFormat, bits, block_absmax, f16_field, inverse_or_zero, nibbles

K_SCALE_SIZE = 12  # bytes of packed 6-bit scales and mins in Q4_K / Q5_K
GROUP_MAX_EPS = np.float32(1e-15)  # below this absolute maximum a sub-block counts as all zero
CHUNK_BLOCKS = 2048  # super-blocks quantized together: the working arrays stay in cache

F32 = np.float32


# -- the helpers of ggml-quants.c, on many sub-blocks at once ------------------------------------------


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's `nearest_int`: add 1.5 * 2^23 in float32 and read the low mantissa bits (int32).

    Halves round to even; past |v| = 2^22, and for inf or NaN, the result wraps as the C's does.
    """
    val = np.asarray(v, F32) + F32(12582912.0)
    return (val.view(np.int32) & 0x007FFFFF) - 0x00400000


def sum_seq(terms: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """`s = 0; for (i...) s += terms[i];` in float32, in that order: (n, m) -> (m,).

    With `first`, the sum starts from it instead of 0 (`s = first; for (i = 1...)`).
    """
    s = np.zeros(terms.shape[1:], F32) if first is None else first.astype(F32, copy=True)
    for t in terms:
        s += t
    return s


def abs_max_signed(xt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`if (ax > amax) { amax = ax; max = x[i]; }` from amax = 0: (n, m) -> amax, max, each (m,)."""
    ax = np.abs(xt)
    i = ax.argmax(axis=0)[None]
    return np.take_along_axis(ax, i, axis=0)[0], np.take_along_axis(xt, i, axis=0)[0]


def max_from_zero(v: np.ndarray, axis: int = -1) -> np.ndarray:
    """`m = 0; if (v > m) m = v;` over an axis: the largest value, or +0 when none is positive (NaN
    never wins a comparison, so it is skipped)."""
    return np.where(v > 0, v, F32(0)).max(axis=axis)


def abs_max_first(v: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """`if (fabsf(v) > amax) { amax = fabsf(v); max = v; }` from 0 over an axis: amax, max (+0 if none).

    NaN never wins the comparison, so it is skipped, as in the C.
    """
    av = np.abs(v)
    av = np.where(av > 0, av, F32(0))
    i = np.expand_dims(av.argmax(axis=axis), axis)
    amax = np.take_along_axis(av, i, axis=axis).squeeze(axis)
    mx = np.take_along_axis(v, i, axis=axis).squeeze(axis)
    return amax, np.where(amax > 0, mx, F32(0))


def to_f16(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 and back: the float32 value a fp16 field stores (round to nearest even)."""
    return np.asarray(v, F32).astype(np.float16).astype(F32)


def sub_blocks_t(x: np.ndarray, n: int) -> np.ndarray:
    """Blocks (n_blocks, QK_K) -> sub-blocks of n values, transposed: (n, n_blocks * QK_K // n)."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def in_chunks(quantize_chunk, x: np.ndarray, block_dtype: np.dtype, chunk_blocks: int = CHUNK_BLOCKS):
    """Run `quantize_chunk` on chunk_blocks rows of x at a time; structured blocks, shape (n_blocks,)."""
    out = np.zeros(len(x), block_dtype)
    with np.errstate(all="ignore"):  # the C divides by zero and masks the result; so does the port
        for start in range(0, len(x), chunk_blocks):
            out[start : start + chunk_blocks] = quantize_chunk(x[start : start + chunk_blocks])
    return out


def make_qkx2_quants(
    xt: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants for every sub-block: x = scale * L - the_min, L in 0..nmax, searched.

    xt, weights: (n, m). Returns scale (m,), the_min (m,) and L (n, m) uint8.
    """
    step_values = [F32(rmin) + F32(rdelta) * F32(i) + F32(nmax) for i in range(nstep + 1)]
    x_min = np.minimum(xt.min(axis=0), F32(0))  # if (min > 0) min = 0
    x_max = xt.max(axis=0)
    sum_w = sum_seq(weights[1:], first=weights[0])
    sum_x = sum_seq(weights[1:] * xt[1:], first=weights[0] * xt[0])
    flat = x_max == x_min

    def error(scale, mn, lf):  # sum of w * |diff| or w * diff^2, diff = scale * L + min - x
        diff = scale * lf + mn - xt
        diff = np.abs(diff) if use_mad else diff * diff
        return sum_seq(weights * diff)

    iscale = F32(nmax) / (x_max - x_min)
    scale = F32(1) / iscale
    L = np.clip(nearest_int(iscale * (xt - x_min)), 0, nmax)
    best_error = error(scale, x_min, L.astype(F32))
    if nstep >= 1:
        for step_value in step_values:
            iscale = step_value / (x_max - x_min)
            laux = np.clip(nearest_int(iscale * (xt - x_min)), 0, nmax)
            lf = laux.astype(F32)
            wl = weights * lf
            sum_l, sum_l2, sum_xl = sum_seq(wl), sum_seq(wl * lf), sum_seq(wl * xt)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive_min = this_min > 0
            this_min = np.where(positive_min, F32(0), this_min)
            this_scale = np.where(positive_min, sum_xl / sum_l2, this_scale)
            cur_error = error(this_scale, this_min, lf)
            better = (D > 0) & (cur_error < best_error)
            L = np.where(better, laux, L)
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            x_min = np.where(better, this_min, x_min)
    L = np.where(flat, 0, L).astype(np.uint8)
    return np.where(flat, F32(0), scale), -x_min, L


def make_qx_quants(xt: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL) for every sub-block: x = scale * (L - nmax).

    xt: (n, m). Returns scale (m,) and L (n, m) in 0..2 nmax - 1 (int32).
    """
    amax, x_max = abs_max_signed(xt)
    w = xt * xt
    wx = w * xt

    def trial(iscale):
        l = np.clip(nearest_int(iscale * xt), -nmax, nmax - 1)
        lf = l.astype(F32)
        return l, sum_seq(wx * lf), sum_seq(w * lf * lf)

    l, sumlx, suml2 = trial(F32(-nmax) / x_max)
    L = l + nmax
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = trial(-(F32(nmax) + F32(0.1) * F32(step)) / x_max)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better, l + nmax, L)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero, F32(0), scale), np.where(zero, 0, L)


def make_q3_quants(xt: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse = true) for every sub-block: x = scale * (L - nmax).

    Starts from the scale -nmax / max, then moves single values to better levels, up to five passes
    (a sub-block stops after a pass that changed nothing). xt: (n, m). Returns scale (m,), L (n, m).
    """
    amax, x_max = abs_max_signed(xt)
    w = xt * xt
    wx = w * xt
    L = np.clip(nearest_int((F32(-nmax) / x_max) * xt), -nmax, nmax - 1)
    lf = L.astype(F32)
    sumlx = sum_seq(wx * lf)
    suml2 = sum_seq(w * lf * lf)
    active = np.ones(xt.shape[1], bool)
    for _ in range(5):
        changed = np.zeros_like(active)
        for i in range(len(xt)):
            li = L[i].astype(F32)
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            new_l = np.clip(nearest_int(xt[i] * sl2 / slx), -nmax, nmax - 1)
            nf = new_l.astype(F32)
            slx = slx + wx[i] * nf
            sl2 = sl2 + w[i] * nf * nf
            # if (slx > 0) { ... if (new_l != L[i]) { ... if (sl2 > 0 && slx*slx*suml2 > sumlx*sumlx*sl2)
            take = active & (sumlx - wx[i] * li > 0) & (new_l != L[i])
            take &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = np.where(take, new_l, L[i])
            sumlx = np.where(take, slx, sumlx)
            suml2 = np.where(take, sl2, suml2)
            changed |= take
        active &= changed
        if not active.any():
            break
    zero = amax < GROUP_MAX_EPS
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale), np.where(zero, 0, L + nmax)


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """2-bit values (n_blocks, 256) -> 64 bytes: byte 32 h + l holds values 128 h + l + 32 k at bits 2 k."""
    q = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales and mins (n_blocks, 8) each -> the 12 bytes of Q4_K / Q5_K (see unpack_scale_min_k4)."""
    out = np.zeros((len(ls), K_SCALE_SIZE), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return out


def quantize_scales_mins_k4(scales: np.ndarray, mins: np.ndarray):
    """Q4_K / Q5_K: sub-block scales and mins (n_blocks, 8) -> packed bytes, d, dmin (as fp16 stores them)."""
    max_scale, max_min = max_from_zero(scales), max_from_zero(mins)
    inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))[:, None]
    inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))[:, None]
    ls = np.minimum(nearest_int(inv_scale * scales) & 0xFF, 63).astype(np.uint8)  # uint8_t, then MIN
    lm = np.minimum(nearest_int(inv_min * mins) & 0xFF, 63).astype(np.uint8)
    return pack_scale_min_k4(ls, lm), max_scale / F32(63), max_min / F32(63)


def requantize_with_min(x: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray, nmax: int) -> np.ndarray:
    """`if (!d) continue; l = nearest_int((x + dm)/d)`, clamped to 0..nmax: x, L (n_blocks, n_sub, n),
    d and dm (n_blocks, n_sub) float32. Sub-blocks whose d is 0 keep their L."""
    d, dm = d[..., None], dm[..., None]
    l = np.clip(nearest_int((x + dm) / d), 0, nmax)
    return np.where(d != 0, l, L)


def quantize_k_with_min(x: np.ndarray, nmax: int, rmin: float, nstep: int):
    """The common part of quantize_row_q4_K_ref and quantize_row_q5_K_ref: (n_blocks, 256) ->
    packed scales (n_blocks, 12), d, dmin (n_blocks,), L (n_blocks, 8, 32) in 0..nmax."""
    nb = len(x)
    xt = sub_blocks_t(x, 32)  # (32, n_blocks * 8)
    av_x = np.sqrt(sum_seq(xt * xt) / F32(32))
    weights = av_x + np.abs(xt)
    scales, mins, L = make_qkx2_quants(xt, weights, nmax, rmin, 0.1, nstep, use_mad=False)
    packed, d, dmin = quantize_scales_mins_k4(scales.reshape(nb, 8), mins.reshape(nb, 8))
    sc, m = unpack_scale_min_k4(packed)
    d_sub = to_f16(d)[:, None] * sc.astype(F32)
    dm_sub = to_f16(dmin)[:, None] * m.astype(F32)
    L = L.T.reshape(nb, 8, 32)
    L = requantize_with_min(x.reshape(nb, 8, 32), L, d_sub, dm_sub, nmax)
    return packed, d, dmin, L


def unpack_scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for j = 0..7: 12 bytes (n_blocks, 12) -> 6-bit scales and mins, (n_blocks, 8) each.

    Bytes 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 mins 0-3; scales and mins 4-7 keep their low
    4 bits in bytes 8-11 (scale low, min high) and their top 2 bits in the top bits of bytes 0-3 / 4-7.
    """
    lo, mid, hi = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    mn = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, mn


def _scales_and_mins(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: per sub-block scale d * sc and min dmin * m, float32, shape (n_blocks, 8, 1)."""
    sc, mn = unpack_scale_min_k4(b["scales"])
    d = f16_field(b, "d") * sc.astype(np.float32)
    m = f16_field(b, "dmin") * mn.astype(np.float32)
    return d[:, :, None], m[:, :, None]


class Q2_K(QuantFormat, ggml_type=GGMLQuantizationType.Q2_K):
    # block_q2_K: 16 sub-blocks of 16; x = d * (scales & 0xF) * q - dmin * (scales >> 4), q 2-bit
    block_dtype = np.dtype(
        [("scales", "u1", (QK_K // 16,)), ("qs", "u1", (QK_K // 4,)), ("d", "<f2"), ("dmin", "<f2")]
    )

    # dequantize_row_q2_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        # Each half of 128 values reads 32 bytes four times, at shifts 0, 2, 4, 6.
        qs = b["qs"].reshape(n, 2, 1, 32)
        shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        q = ((qs >> shifts) & 3).reshape(n, 16, 16).astype(np.float32)  # (n_blocks, sub-block, 16)
        dl = (f16_field(b, "d") * (b["scales"] & 0x0F).astype(np.float32))[:, :, None]
        ml = (f16_field(b, "dmin") * (b["scales"] >> 4).astype(np.float32))[:, :, None]
        return (dl * q - ml).reshape(n, QK_K)

    # quantize_row_q2_K_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return in_chunks(cls._quantize_chunk, x, cls.block_dtype)

    @classmethod
    def _quantize_chunk(cls, x: np.ndarray) -> np.ndarray:
        nb = len(x)
        xt = sub_blocks_t(x, 16)  # (16, n_blocks * 16)
        scales, mins, L = make_qkx2_quants(xt, np.abs(xt), 3, -0.5, 0.1, 15, use_mad=True)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale, max_min = max_from_zero(scales), max_from_zero(mins)
        # 4-bit scales and mins, each against its block maximum (15 / max); zero when that is not positive
        ls = nearest_int((F32(15) / max_scale)[:, None] * scales)
        lm = nearest_int((F32(15) / max_min)[:, None] * mins)
        ls = np.where(max_scale[:, None] > 0, ls, 0)
        lm = np.where(max_min[:, None] > 0, lm, 0)
        out = np.zeros(nb, cls.block_dtype)
        out["scales"] = (ls | (lm << 4)) & 0xFF
        out["d"] = np.where(max_scale > 0, max_scale / F32(15), F32(0))
        out["dmin"] = np.where(max_min > 0, max_min / F32(15), F32(0))
        d = f16_field(out, "d") * (out["scales"] & 0x0F).astype(F32)  # (n_blocks, 16)
        dm = f16_field(out, "dmin") * (out["scales"] >> 4).astype(F32)
        L = requantize_with_min(x.reshape(nb, 16, 16), L.T.reshape(nb, 16, 16), d, dm, 3)
        out["qs"] = pack_2bit(L.reshape(nb, QK_K))
        return out


class Q3_K(QuantFormat, ggml_type=GGMLQuantizationType.Q3_K):
    # block_q3_K: 16 sub-blocks of 16; x = d * (scale - 32) * (q - 4 * !hbit), q 2-bit, scale 6-bit
    block_dtype = np.dtype(
        [("hmask", "u1", (QK_K // 8,)), ("qs", "u1", (QK_K // 4,)), ("scales", "u1", (12,)), ("d", "<f2")]
    )

    @staticmethod
    def unpack_scales(scales: np.ndarray) -> np.ndarray:
        """12 bytes (n_blocks, 12) -> 16 6-bit scales (n_blocks, 16), as the kmask1/kmask2 code does.

        Scale k: low 4 bits in byte k % 8 (low nibble for k < 8, high for k >= 8), top 2 bits in byte
        8 + k % 4 at bit 2 * (k // 4).
        """
        low = nibbles(scales[:, :8])  # (n_blocks, 16)
        high = scales[:, 8:12].reshape(-1, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)
        high = (high & 3).reshape(-1, 16)
        return low | (high << 4)

    # dequantize_row_q3_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        scale = cls.unpack_scales(b["scales"]).astype(np.int8) - np.int8(32)
        dl = (f16_field(b, "d") * scale.astype(np.float32))[:, :, None]  # (n_blocks, 16, 1)
        # Each half of 128 values reads 32 bytes of qs four times, at shifts 0, 2, 4, 6; value j of
        # group g (0..7) takes its high bit from bit g of hmask[j].
        qs = b["qs"].reshape(n, 2, 1, 32)
        shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        ql = ((qs >> shifts) & 3).reshape(n, 8, 32)
        hbit = bits(b["hmask"], 8).transpose(0, 2, 1)  # (n_blocks, group, 32)
        q = ql.astype(np.int8) - ((hbit ^ 1) << 2).astype(np.int8)  # hbit 0 subtracts 4
        return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)

    @staticmethod
    def pack_scales(l: np.ndarray) -> np.ndarray:
        """16 6-bit scales (n_blocks, 16) -> 12 bytes, the inverse of unpack_scales."""
        low = (l[:, :8] & 0x0F) | ((l[:, 8:] & 0x0F) << 4)
        high = (l >> 4).reshape(-1, 4, 4)  # (n_blocks, j // 4, j % 4) -> byte 8 + j % 4, bits 2 * (j // 4)
        high = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
        return np.concatenate([low, high], axis=-1).astype(np.uint8)

    # quantize_row_q3_K_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return in_chunks(cls._quantize_chunk, x, cls.block_dtype)

    @classmethod
    def _quantize_chunk(cls, x: np.ndarray) -> np.ndarray:
        nb = len(x)
        scales, L = make_q3_quants(sub_blocks_t(x, 16), 4)
        scales = scales.reshape(nb, 16)
        L = L.T.reshape(nb, 16, 16)
        _, max_scale = abs_max_first(scales)
        iscale = (F32(-32) / max_scale)[:, None]
        l = nearest_int(iscale * scales).astype(np.int8)  # int8_t l = nearest_int(...)
        l = np.clip(l, -32, 31).astype(np.int32) + 32
        out = np.zeros(nb, cls.block_dtype)
        out["scales"] = np.where(max_scale[:, None] != 0, cls.pack_scales(l), 0)
        out["d"] = np.where(max_scale != 0, F32(1) / iscale[:, 0], F32(0))
        sc = cls.unpack_scales(out["scales"]).astype(np.int32) - 32
        d = (f16_field(out, "d") * sc.astype(F32))[..., None]  # (n_blocks, 16, 1)
        l = np.clip(nearest_int(x.reshape(nb, 16, 16) / d), -4, 3) + 4
        L = np.where(d != 0, l, L).reshape(nb, QK_K)
        # high bit of value j in bit j // 32 of hmask[j % 32]; the low two bits as in Q2_K
        high = (L > 3).astype(np.uint8).reshape(nb, 8, 32)
        out["hmask"] = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[:, None], axis=1)
        out["qs"] = pack_2bit(np.where(L > 3, L - 4, L))
        return out


class Q4_K(QuantFormat, ggml_type=GGMLQuantizationType.Q4_K):
    # block_q4_K: 8 sub-blocks of 32; x = d * sc * q - dmin * m, q 4-bit, sc and m 6-bit
    block_dtype = np.dtype(
        [("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (K_SCALE_SIZE,)), ("qs", "u1", (QK_K // 2,))]
    )

    # dequantize_row_q4_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        d, m = _scales_and_mins(b)
        # 32 bytes per 64 values: low nibbles are sub-block 2i, high nibbles sub-block 2i + 1.
        q = nibbles(b["qs"].reshape(n, 4, 32)).reshape(n, 8, 32).astype(np.float32)
        return (d * q - m).reshape(n, QK_K)

    # quantize_row_q4_K_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return in_chunks(cls._quantize_chunk, x, cls.block_dtype)

    @classmethod
    def _quantize_chunk(cls, x: np.ndarray) -> np.ndarray:
        scales, d, dmin, L = quantize_k_with_min(x, 15, -1.0, 20)
        L = L.reshape(len(x), 4, 2, 32).astype(np.uint8)  # sub-blocks 2i and 2i + 1 share 32 bytes
        out = np.zeros(len(x), cls.block_dtype)
        out["d"], out["dmin"], out["scales"] = d, dmin, scales
        out["qs"] = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(len(x), QK_K // 2)
        return out


class Q5_K(QuantFormat, ggml_type=GGMLQuantizationType.Q5_K):
    # block_q5_K: as Q4_K with a fifth bit: value j of sub-block s has it in bit s of qh[j]
    block_dtype = np.dtype(
        [
            ("d", "<f2"),
            ("dmin", "<f2"),
            ("scales", "u1", (K_SCALE_SIZE,)),
            ("qh", "u1", (QK_K // 8,)),
            ("qs", "u1", (QK_K // 2,)),
        ]
    )

    # dequantize_row_q5_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        d, m = _scales_and_mins(b)
        ql = nibbles(b["qs"].reshape(n, 4, 32)).reshape(n, 8, 32)
        qh = bits(b["qh"], 8).transpose(0, 2, 1)  # (n_blocks, sub-block, 32)
        q = (ql | (qh << 4)).astype(np.float32)
        return (d * q - m).reshape(n, QK_K)

    # quantize_row_q5_K_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return in_chunks(cls._quantize_chunk, x, cls.block_dtype)

    @classmethod
    def _quantize_chunk(cls, x: np.ndarray) -> np.ndarray:
        nb = len(x)
        scales, d, dmin, L = quantize_k_with_min(x, 31, -0.5, 15)
        L = L.astype(np.uint8)  # (n_blocks, 8, 32)
        low = (L & 0x0F).reshape(nb, 4, 2, 32)
        out = np.zeros(nb, cls.block_dtype)
        out["d"], out["dmin"], out["scales"] = d, dmin, scales
        out["qs"] = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(nb, QK_K // 2)
        out["qh"] = np.bitwise_or.reduce((L >> 4) << np.arange(8, dtype=np.uint8)[:, None], axis=1)
        return out


class Q6_K(QuantFormat, ggml_type=GGMLQuantizationType.Q6_K):
    # block_q6_K: 16 sub-blocks of 16; x = d * scale * (q - 32), q 6-bit (4 in ql, 2 in qh), scale int8
    block_dtype = np.dtype(
        [
            ("ql", "u1", (QK_K // 2,)),
            ("qh", "u1", (QK_K // 4,)),
            ("scales", "i1", (QK_K // 16,)),
            ("d", "<f2"),
        ]
    )

    # dequantize_row_q6_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        n = len(b)
        # Each half of 128 values: 64 bytes of ql give 4 runs of 32 low parts (low nibbles of bytes
        # 0-31, 32-63, then high nibbles of the same), 32 bytes of qh their top 2 bits at shifts 0, 2, 4, 6.
        ql = b["ql"].reshape(n, 2, 1, 2, 32)
        ql = (ql >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1, 1)) & 0x0F
        ql = ql.reshape(n, 2, 4, 32)
        qh = b["qh"].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        qh = qh & 3
        q = (ql | (qh << 4)).astype(np.int8) - np.int8(32)
        d = (f16_field(b, "d") * b["scales"].astype(np.float32))[:, :, None]  # (n_blocks, 16, 1)
        return (d * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)

    # quantize_row_q6_K_ref
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        return in_chunks(cls._quantize_chunk, x, cls.block_dtype)

    @classmethod
    def _quantize_chunk(cls, x: np.ndarray) -> np.ndarray:
        nb = len(x)
        scales, L = make_qx_quants(sub_blocks_t(x, 16), 32)
        scales = scales.reshape(nb, 16)
        L = L.T.reshape(nb, 16, 16)
        max_abs_scale, max_scale = abs_max_first(scales)
        zero = max_abs_scale < GROUP_MAX_EPS  # the whole block stays zero
        iscale = F32(-128) / max_scale
        out = np.zeros(nb, cls.block_dtype)
        out["d"] = np.where(zero, F32(0), F32(1) / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales)) & 0xFF
        out["scales"] = np.where(zero[:, None], 0, sc).astype(np.uint8).view(np.int8)
        d = (f16_field(out, "d") * out["scales"].astype(F32))[..., None]  # (n_blocks, 16, 1)
        l = np.clip(nearest_int(x.reshape(nb, 16, 16) / d), -32, 31) + 32
        L = np.where(d != 0, l, L).reshape(nb, 2, 4, 32).astype(np.uint8)  # (block, half, quarter, 32)
        low, high = L & 0x0F, L >> 4
        ql = np.stack([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
        qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
        out["ql"] = ql.reshape(nb, QK_K // 2)
        out["qh"] = qh.reshape(nb, QK_K // 4)
        for name in ("ql", "qh", "scales"):  # memset(&y[i], 0, sizeof(block_q6_K))
            out[name][zero] = 0
        return out


class Q8_K(QuantFormat, ggml_type=GGMLQuantizationType.Q8_K):
    # block_q8_K: x = d * q; bsums[i] = sum of q[16 i : 16 i + 16] (for the K-quant dot products)
    block_dtype = np.dtype([("d", "<f4"), ("qs", "i1", (QK_K,)), ("bsums", "<i2", (QK_K // 16,))])

    # dequantize_row_q8_K
    @classmethod
    def dequantize_blocks(cls, b: np.ndarray) -> np.ndarray:
        return b["d"].reshape(-1, 1) * b["qs"].astype(np.float32)

    # quantize_row_q8_K_ref. Unlike ggml, an all-zero block also gets zero bsums (ggml leaves them).
    @classmethod
    def quantize_blocks(cls, x: np.ndarray) -> np.ndarray:
        x_max = block_absmax(x)  # (n_blocks, 1)
        with np.errstate(divide="ignore"):
            iscale = np.float32(-127) / x_max
        iscale = np.where(x_max != 0, iscale, np.float32(0))
        # nearest_int rounds halves to even, as np.rint does
        q = np.minimum(np.rint(iscale * x), 127).astype(np.int8)
        out = np.zeros(len(x), cls.block_dtype)
        out["d"] = inverse_or_zero(iscale)[:, 0]
        out["qs"] = q
        out["bsums"] = q.reshape(len(x), QK_K // 16, 16).sum(axis=-1, dtype=np.int16)
        return out
