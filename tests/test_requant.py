"""The K-quant and IQ4 quantizers against line-by-line ports of ggml's C, and re-quantized SmolLM2
files against llama.cpp's own (tests/fixtures/requant_smollm2.json, by make_requant_fixture.py).

The ports below are the slow, obvious twins: scalar float32 code that follows ggml-quants.c statement
by statement (`quantize_row_<type>_ref`, `make_qkx2_quants`, `make_qx_quants`, `make_q3_quants`,
`quantize_row_iq4_nl_impl`, `best_index_int8`, `nearest_int`). The vectorized quantizers must give
the same bytes on random blocks and on the edge cases of the C.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T

from edgeinfer import quant
from edgeinfer.gguf import GGUFFile
from edgeinfer.models import cache_dir
from edgeinfer.tools import requant

FIXTURES = Path(__file__).parent / "fixtures"
f32 = np.float32
GROUP_MAX_EPS = f32(1e-15)
KVALUES = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]  # kvalues_iq4nl
NEW_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]


# -- the C, line by line -----------------------------------------------------------------------------------


def nearest_int(fval) -> int:
    val = f32(fval) + f32(12582912.0)
    return int((np.array(val, f32).view(np.int32) & 0x007FFFFF) - 0x00400000)


def fp16(v) -> np.float32:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v))."""
    return f32(np.float16(f32(v)))


def clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def make_qkx2_quants(n, nmax, x, weights, rmin, rdelta, nstep, use_mad):
    L, Laux = [0] * n, [0] * n
    mn, mx = x[0], x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > 0:
        mn = f32(0)
    if mx == mn:
        return f32(0), -mn, [0] * n
    iscale = f32(nmax) / (mx - mn)
    scale = f32(1) / iscale
    best_error = f32(0)
    for i in range(n):
        L[i] = clamp(nearest_int(iscale * (x[i] - mn)), 0, nmax)
        diff = scale * f32(L[i]) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    for step in range(nstep + 1):
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (mx - mn)
        sum_l = sum_l2 = sum_xl = f32(0)
        for i in range(n):
            l = clamp(nearest_int(iscale * (x[i] - mn)), 0, nmax)
            Laux[i] = l
            w = weights[i]
            sum_l += w * f32(l)
            sum_l2 += w * f32(l) * f32(l)
            sum_xl += w * f32(l) * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = f32(0)
                this_scale = sum_xl / sum_l2
            cur_error = f32(0)
            for i in range(n):
                diff = this_scale * f32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                L = list(Laux)
                best_error, scale, mn = cur_error, this_scale, this_min
    return scale, -mn, L


def make_qx_quants(n, nmax, x):  # rmse_type = 1, qw = NULL
    L = [0] * n
    amax = mx = f32(0)
    for i in range(n):
        if abs(x[i]) > amax:
            amax, mx = abs(x[i]), x[i]
    if amax < GROUP_MAX_EPS:
        return f32(0), [0] * n
    iscale = f32(-nmax) / mx
    sumlx = suml2 = f32(0)
    for i in range(n):
        l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
        L[i] = l + nmax
        w = x[i] * x[i]
        sumlx += w * x[i] * f32(l)
        suml2 += w * f32(l) * f32(l)
    scale = sumlx / suml2 if suml2 else f32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(f32(nmax) + f32(0.1) * f32(step)) / mx
        sumlx = suml2 = f32(0)
        for i in range(n):
            l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
            w = x[i] * x[i]
            sumlx += w * x[i] * f32(l)
            suml2 += w * f32(l) * f32(l)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale, L


def make_q3_quants(n, nmax, x):  # do_rmse = true
    L = [0] * n
    amax = mx = f32(0)
    for i in range(n):
        if abs(x[i]) > amax:
            amax, mx = abs(x[i]), x[i]
    if amax < GROUP_MAX_EPS:
        return f32(0), [0] * n
    iscale = f32(-nmax) / mx
    sumlx = suml2 = f32(0)
    for i in range(n):
        l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1)
        L[i] = l
        w = x[i] * x[i]
        sumlx += w * x[i] * f32(l)
        suml2 += w * f32(l) * f32(l)
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * f32(L[i])
            if slx > 0:
                sl2 = suml2 - w * f32(L[i]) * f32(L[i])
                new_l = clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
                if new_l != L[i]:
                    slx += w * x[i] * f32(new_l)
                    sl2 += w * f32(new_l) * f32(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i], sumlx, suml2 = new_l, slx, sl2
                        n_changed += 1
        if not n_changed:
            break
    return (sumlx / suml2 if suml2 > 0 else f32(0)), [l + nmax for l in L]


def pack_2bit(L):
    qs = [0] * 64
    for j in range(0, 256, 128):
        for l in range(32):
            qs[j // 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)
    return qs


def block(ggml_type: T, **fields) -> bytes:
    b = np.zeros(1, quant.get_format(ggml_type).block_dtype)
    for name, value in fields.items():
        b[name] = value
    return b.tobytes()


def quantize_row_q2_K_ref(x):
    L, scales, mins = [0] * 256, [f32(0)] * 16, [f32(0)] * 16
    max_scale = max_min = f32(0)
    for j in range(16):
        xs = x[16 * j : 16 * j + 16]
        weights = [abs(v) for v in xs]
        scales[j], mins[j], L[16 * j : 16 * j + 16] = make_qkx2_quants(16, 3, xs, weights, -0.5, 0.1, 15, True)
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    sc = [0] * 16
    d = dmin = f32(0)
    if max_scale > 0:
        iscale = f32(15) / max_scale
        sc = [nearest_int(iscale * s) & 0xFF for s in scales]
        d = max_scale / f32(15)
    if max_min > 0:
        iscale = f32(15) / max_min
        sc = [(sc[j] | (nearest_int(iscale * mins[j]) << 4)) & 0xFF for j in range(16)]
        dmin = max_min / f32(15)
    for j in range(16):
        dd = fp16(d) * f32(sc[j] & 0xF)
        if not dd:
            continue
        dm = fp16(dmin) * f32(sc[j] >> 4)
        for ii in range(16):
            L[16 * j + ii] = clamp(nearest_int((x[16 * j + ii] + dm) / dd), 0, 3)
    return block(T.Q2_K, scales=sc, qs=pack_2bit(L), d=d, dmin=dmin)


def quantize_row_q3_K_ref(x):
    L, scales = [0] * 256, [f32(0)] * 16
    max_scale = amax = f32(0)
    for j in range(16):
        scales[j], L[16 * j : 16 * j + 16] = make_q3_quants(16, 4, x[16 * j : 16 * j + 16])
        if abs(scales[j]) > amax:
            amax, max_scale = abs(scales[j]), scales[j]
    packed = [0] * 12
    d = f32(0)
    if max_scale:
        iscale = f32(-32) / max_scale
        for j in range(16):
            l = ((nearest_int(iscale * scales[j]) + 128) & 0xFF) - 128  # int8_t l = nearest_int(...)
            l = clamp(l, -32, 31) + 32
            if j < 8:
                packed[j] = l & 0xF
            else:
                packed[j - 8] |= (l & 0xF) << 4
            packed[j % 4 + 8] |= (l >> 4) << (2 * (j // 4))
        d = f32(1) / iscale
    for j in range(16):
        sc = packed[j] & 0xF if j < 8 else packed[j - 8] >> 4
        sc = (sc | (((packed[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
        dd = fp16(d) * f32(sc)
        if not dd:
            continue
        for ii in range(16):
            L[16 * j + ii] = clamp(nearest_int(x[16 * j + ii] / dd), -4, 3) + 4
    hmask = [0] * 32
    m, hm = 0, 1
    for j in range(256):
        if L[j] > 3:
            hmask[m] |= hm
            L[j] -= 4
        m += 1
        if m == 32:
            m, hm = 0, hm << 1
    return block(T.Q3_K, hmask=hmask, qs=pack_2bit(L), scales=packed, d=d)


def quantize_row_q45_K_ref(x, nmax: int):
    """quantize_row_q4_K_ref (nmax 15) and quantize_row_q5_K_ref (nmax 31)."""
    rmin, nstep = (-1.0, 20) if nmax == 15 else (-0.5, 15)
    L, scales, mins = [0] * 256, [f32(0)] * 8, [f32(0)] * 8
    max_scale = max_min = f32(0)
    for j in range(8):
        xs = x[32 * j : 32 * j + 32]
        sum_x2 = f32(0)
        for v in xs:
            sum_x2 += v * v
        av_x = np.sqrt(sum_x2 / f32(32))
        weights = [av_x + abs(v) for v in xs]
        found = make_qkx2_quants(32, nmax, xs, weights, rmin, 0.1, nstep, False)
        scales[j], mins[j], L[32 * j : 32 * j + 32] = found
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    inv_scale = f32(63) / max_scale if max_scale > 0 else f32(0)
    inv_min = f32(63) / max_min if max_min > 0 else f32(0)
    packed = [0] * 12
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        if j < 4:
            packed[j], packed[j + 4] = ls, lm
        else:
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            packed[j - 4] |= (ls >> 4) << 6
            packed[j] |= (lm >> 4) << 6
    d, dmin = max_scale / f32(63), max_min / f32(63)
    for j in range(8):
        if j < 4:
            sc, m = packed[j] & 63, packed[j + 4] & 63
        else:
            sc = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4)
            m = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4)
        dd = fp16(d) * f32(sc)
        if not dd:
            continue
        dm = fp16(dmin) * f32(m)
        for ii in range(32):
            L[32 * j + ii] = clamp(nearest_int((x[32 * j + ii] + dm) / dd), 0, nmax)
    qs = [0] * 128
    if nmax == 15:
        for k, j in enumerate(range(0, 256, 64)):
            for l in range(32):
                qs[32 * k + l] = L[j + l] | (L[j + l + 32] << 4)
        return block(T.Q4_K, d=d, dmin=dmin, scales=packed, qs=qs)
    qh = [0] * 32
    m1, m2 = 1, 2
    for k, n in enumerate(range(0, 256, 64)):
        for j in range(32):
            l1, l2 = L[n + j], L[n + j + 32]
            if l1 > 15:
                l1 -= 16
                qh[j] |= m1
            if l2 > 15:
                l2 -= 16
                qh[j] |= m2
            qs[32 * k + j] = l1 | (l2 << 4)
        m1, m2 = m1 << 2, m2 << 2
    return block(T.Q5_K, d=d, dmin=dmin, scales=packed, qh=qh, qs=qs)


def quantize_row_q6_K_ref(x):
    L, scales = [0] * 256, [f32(0)] * 16
    max_scale = max_abs_scale = f32(0)
    for ib in range(16):
        scales[ib], L[16 * ib : 16 * ib + 16] = make_qx_quants(16, 32, x[16 * ib : 16 * ib + 16])
        if abs(scales[ib]) > max_abs_scale:
            max_abs_scale, max_scale = abs(scales[ib]), scales[ib]
    if max_abs_scale < GROUP_MAX_EPS:
        return block(T.Q6_K)
    iscale = f32(-128) / max_scale
    d = f32(1) / iscale
    sc = [((min(127, nearest_int(iscale * s)) + 128) & 0xFF) - 128 for s in scales]  # int8_t
    for j in range(16):
        dd = fp16(d) * f32(sc[j])
        if not dd:
            continue
        for ii in range(16):
            L[16 * j + ii] = clamp(nearest_int(x[16 * j + ii] / dd), -32, 31) + 32
    ql, qh = [0] * 128, [0] * 64
    for h, j in enumerate(range(0, 256, 128)):
        for l in range(32):
            q1, q2, q3, q4 = (L[j + l + 32 * k] & 0xF for k in range(4))
            ql[64 * h + l] = q1 | (q3 << 4)
            ql[64 * h + l + 32] = q2 | (q4 << 4)
            qh[32 * h + l] = sum((L[j + l + 32 * k] >> 4) << (2 * k) for k in range(4))
    return block(T.Q6_K, ql=ql, qh=qh, scales=sc, d=d)


def best_index_int8(x) -> int:
    """ggml's best_index_int8 (the binary search of the llama.cpp the fixture was made with)."""
    val = KVALUES
    if x <= val[0]:
        return 0
    if x >= val[15]:
        return 15
    ml, mu = 0, 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < val[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - f32(val[mu - 1]) < f32(val[mu]) - x else mu


def quantize_iq4_ref(x, super_block_size: int):
    """quantize_row_iq4_nl_impl(super_block_size, 32, 16, ..., quant_weights = NULL, ntry = 7)."""
    ntry, values = 7, KVALUES
    L, scales = [0] * super_block_size, [f32(0)] * (super_block_size // 32)
    max_scale = amax_scale = f32(0)
    for ib in range(super_block_size // 32):
        xb = x[32 * ib : 32 * ib + 32]
        weight = [v * v for v in xb]
        amax = mx = f32(0)
        for v in xb:
            if abs(v) > amax:
                amax, mx = abs(v), v
        if amax < GROUP_MAX_EPS:
            scales[ib] = f32(0)
            continue
        d = -mx / f32(values[0])
        inv = f32(1) / d
        sumqx = sumq2 = f32(0)
        for j in range(32):
            l = best_index_int8(inv * xb[j])
            L[32 * ib + j] = l
            q = f32(values[l])
            sumqx += weight[j] * q * xb[j]
            sumq2 += weight[j] * q * q
        d = sumqx / sumq2 if sumq2 > 0 else f32(0)
        best = d * sumqx
        for itry in range(-ntry, ntry + 1):
            inv = f32(itry + values[0]) / mx
            sumqx = sumq2 = f32(0)
            for j in range(32):
                q = f32(values[best_index_int8(inv * xb[j])])
                sumqx += weight[j] * q * xb[j]
                sumq2 += weight[j] * q * q
            if sumq2 > 0 and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        if abs(d) > amax_scale:
            amax_scale, max_scale = abs(d), d
    if super_block_size == 32:
        inv = f32(1) / scales[0] if scales[0] else f32(0)
        L = [best_index_int8(inv * v) for v in x]
        return block(T.IQ4_NL, d=scales[0], qs=[L[j] | (L[16 + j] << 4) for j in range(16)])
    scales_h, scales_l = 0, [0] * 4
    d = -max_scale / f32(32)
    inv = f32(1) / d if d else f32(0)
    for ib in range(8):
        l = clamp(nearest_int(inv * scales[ib]), -32, 31)
        dl = d * f32(l)
        idl = f32(1) / dl if dl else f32(0)
        for j in range(32):
            L[32 * ib + j] = best_index_int8(idl * x[32 * ib + j])
        l += 32
        scales_l[ib // 2] |= (l & 0xF) << (4 * (ib % 2))
        scales_h |= (l >> 4) << (2 * (ib % 8))
    qs = [L[32 * i + j] | (L[32 * i + 16 + j] << 4) for i in range(8) for j in range(16)]
    return block(T.IQ4_XS, d=d, scales_h=scales_h, scales_l=scales_l, qs=qs)


SLOW_TWINS = {
    T.Q2_K: quantize_row_q2_K_ref,
    T.Q3_K: quantize_row_q3_K_ref,
    T.Q4_K: lambda x: quantize_row_q45_K_ref(x, 15),
    T.Q5_K: lambda x: quantize_row_q45_K_ref(x, 31),
    T.Q6_K: quantize_row_q6_K_ref,
    T.IQ4_NL: lambda x: quantize_iq4_ref(x, 32),
    T.IQ4_XS: lambda x: quantize_iq4_ref(x, 256),
}


# -- the quantizers against the C ports ------------------------------------------------------------------


def edge_blocks() -> np.ndarray:
    """Super-blocks of 256 values: random data at many scales and the edge cases of the C."""
    rng = np.random.default_rng(7)
    normal = rng.standard_normal((12, 256))
    rows = [normal[i] * s for i, s in enumerate((1e-14, 1e-6, 1e-3, 0.02, 0.02, 1.0, 1.0, 30.0, 1e4, 1e30))]
    rows.append(rng.standard_t(3, 256) * 0.05)  # heavy tails, like real weights
    rows.append(np.zeros(256))
    rows.append(np.full(256, 0.7))  # constant: min == max in every sub-block
    rows.append(np.full(256, -3.0))
    rows.append(np.abs(normal[10]))  # all positive: min clamps to 0
    rows.append(-np.abs(normal[11]))
    one = np.zeros(256)
    one[37] = 5.0
    rows.append(one)  # a single non-zero value
    rows.append(rng.integers(-254, 255, 256) / 2.0)  # many exact halves: nearest_int's ties
    rows.append(np.where(rng.random(256) < 0.9, 0.0, rng.standard_normal(256)))  # sparse
    mixed = rng.standard_normal(256) * np.repeat(10.0 ** rng.integers(-12, 3, 16), 16)
    rows.append(mixed)  # sub-blocks of very different magnitudes
    tiny = rng.standard_normal(256) * 1e-3
    tiny[:16] = 1e-16  # one sub-block under GROUP_MAX_EPS
    rows.append(tiny)
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("ggml_type", NEW_TYPES, ids=lambda t: t.name)
def test_quantizer_matches_the_c_line_by_line(ggml_type):
    x = edge_blocks()
    fmt = quant.get_format(ggml_type)
    ours = quant.quantize(x, ggml_type).reshape(-1, fmt.type_size)
    slow = SLOW_TWINS[ggml_type]
    with np.errstate(all="ignore"):  # the C divides by zero where it then masks the result
        expected = [slow(list(b)) for b in x.reshape(-1, fmt.block_size)]
    bad = [i for i, e in enumerate(expected) if ours[i].tobytes() != e]
    if bad:
        i = bad[0]
        raise AssertionError(
            f"{len(bad)} of {len(expected)} blocks differ, the first #{i}: "
            f"{ours[i].tobytes().hex()} != {expected[i].hex()}"
        )


def test_nearest_int_is_the_magic_number_trick():
    from edgeinfer.quant.kquants import nearest_int as ours

    v = [0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 1e-30, -0.0, 4194303.0, 4194304.5, 1e9, np.inf, np.nan]
    v = np.array(v, f32)
    assert ours(v).tolist() == [nearest_int(a) for a in v]
    assert ours(v)[:6].tolist() == [0, 2, 2, 0, -2, 2]  # halves to even


def test_best_index_agrees_with_the_c_around_every_midpoint():
    from edgeinfer.quant.iquants import best_index_iq4nl

    mids = [np.float32((a + b) / 2) for a, b in zip(KVALUES[:-1], KVALUES[1:])]
    near = [(np.array(m).view(np.int32) + np.arange(-300, 300, dtype=np.int32)).view(f32) for m in mids]
    special = np.array([-1e30, -128, 0.0, -0.0, 1e30, np.inf, -np.inf, np.nan], f32)
    x = np.concatenate([*near, np.array(KVALUES, f32), special])
    assert best_index_iq4nl(x).tolist() == [best_index_int8(v) for v in x]


def test_new_quantizers_round_trip():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((16, 1024)) * rng.uniform(0.01, 10, (16, 1))).astype(np.float32)
    # relative RMS error of dequantize(quantize(x)) on normal data (measured, +20%)
    max_rms = {
        T.Q2_K: 0.373, T.Q3_K: 0.19, T.Q4_K: 0.089, T.Q5_K: 0.045, T.Q6_K: 0.022, T.IQ4_NL: 0.095, T.IQ4_XS: 0.095,
    }  # fmt: skip
    for ggml_type, bound in max_rms.items():
        y = quant.dequantize(quant.quantize(x, ggml_type), ggml_type, x.shape)
        rms = np.sqrt(np.mean((y - x) ** 2, axis=1) / np.mean(x**2, axis=1))
        assert rms.max() <= bound, (ggml_type.name, rms.max())


# -- the tensor types llama.cpp chooses -----------------------------------------------------------------


def test_tensor_types_follow_llama_cpp_rules():
    assert requant.ggml_n_dims((576, 1)) == 1 and requant.ggml_n_dims((576, 1, 4)) == 3
    assert requant.tensor_allows_quantization("blk.0.attn_q.weight", (576, 576))
    assert not requant.tensor_allows_quantization("blk.0.attn_norm.weight", (576,))
    assert not requant.tensor_allows_quantization("blk.0.ffn_gate_inp.weight", (576, 8))
    assert not requant.tensor_allows_quantization("blk.0.attn_q.bias", (576, 576))
    assert not requant.tensor_allows_quantization("position_embd.weight", (576, 512))
    assert requant.fallback_type("w", 1536, T.Q4_K) == T.Q4_K
    assert requant.fallback_type("w", 576, T.Q4_K) == T.Q5_0
    assert requant.fallback_type("w", 576, T.Q3_K) == T.Q4_0
    assert requant.fallback_type("w", 576, T.IQ4_XS) == T.IQ4_NL
    assert requant.fallback_type("w", 80, T.Q6_K) == T.F16  # not even blocks of 32 fit
    with pytest.raises(ValueError, match="no fallback type for Q4_0"):
        requant.fallback_type("w", 48, T.Q4_0)


def _write_tiny(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors = {
        "token_embd.weight": rng.standard_normal((8, 512)).astype(np.float32),
        "blk.0.attn_norm.weight": rng.standard_normal(512).astype(np.float32),
        "blk.0.attn_q.weight": rng.standard_normal((4, 64)).astype(np.float32),
        "blk.0.ffn_down.weight": rng.standard_normal((4, 256)).astype(np.float32),
    }
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint32("llama.block_count", 1)
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.5, 1.5])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, x in tensors.items():
        w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def test_requantize_a_small_file(tmp_path):
    tensors = _write_tiny(tmp_path / "f32.gguf")
    types = requant.requantize_gguf(tmp_path / "f32.gguf", tmp_path / "q4_k.gguf", T.Q4_K, progress=False)
    assert types == {
        "token_embd.weight": T.Q4_K,
        "blk.0.attn_norm.weight": T.F32,
        "blk.0.attn_q.weight": T.Q5_0,
        "blk.0.ffn_down.weight": T.Q4_K,
    }
    with GGUFFile(tmp_path / "q4_k.gguf") as f:
        assert list(f.tensors) == list(tensors)  # llama.cpp's order, which this file already has
        assert f.get("general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
        assert f.get("general.quantization_version") == 2
        assert f.get("tokenizer.ggml.tokens") == ["a", "b"]
        assert f.get("tokenizer.ggml.scores").tolist() == [0.5, 1.5]
        assert list(f.metadata)[-2:] == ["general.quantization_version", "general.file_type"]
        for name, x in tensors.items():
            t = f.tensor(name)
            assert t.ggml_type == types[name]
            assert np.array_equal(t.data.reshape(-1), quant.quantize(x, types[name]).reshape(-1))
    requant.dequantize_gguf(tmp_path / "q4_k.gguf", tmp_path / "back.gguf", progress=False)
    with GGUFFile(tmp_path / "back.gguf") as f:
        assert {t.ggml_type for t in f.tensors.values()} == {T.F32}
        assert f.get("general.file_type") == gguf.LlamaFileType.ALL_F32
        x = tensors["blk.0.ffn_down.weight"]
        assert np.abs(f.tensor("blk.0.ffn_down.weight").array() - x).max() < 0.2 * np.abs(x).max()


def test_requantize_refuses_types_it_cannot_write(tmp_path):
    _write_tiny(tmp_path / "f32.gguf")
    with pytest.raises(ValueError, match="Re-quantizing to IQ1_S is not supported"):
        requant.requantize_gguf(tmp_path / "f32.gguf", tmp_path / "x.gguf", T.IQ1_S, progress=False)


# -- SmolLM2 against llama.cpp's own files --------------------------------------------------------------

REQUANT_FIXTURE = json.loads((FIXTURES / "requant_smollm2.json").read_text())
QUANT_SOURCES = [
    Path(requant.__file__),
    *sorted(Path(quant.__file__).parent.glob("*.py")),
]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="session")
def smollm2_source_sha(smollm2_path):
    sha = _file_sha256(Path(smollm2_path))
    assert sha == REQUANT_FIXTURE["source"]["sha256"], "not the SmolLM2 file the fixture was made from"
    return sha


def requantized(smollm2_path, source_sha: str, ggml_type: T) -> Path:
    """requantize_gguf of SmolLM2, cached by source, type and the quantizers' code (any edit re-runs it)."""
    code = hashlib.sha256(b"".join(p.read_bytes() for p in QUANT_SOURCES)).hexdigest()
    folder = cache_dir() / "requant"
    path = folder / f"smollm2-{source_sha[:12]}-{code[:12]}-{ggml_type.name.lower()}.gguf"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"smollm2-*-{ggml_type.name.lower()}.gguf"):
            stale.unlink(missing_ok=True)
        partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
        try:
            requant.requantize_gguf(smollm2_path, partial, ggml_type, progress=True)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("name", list(REQUANT_FIXTURE["formats"]))
def test_requantized_smollm2_is_llama_cpps_file(name, smollm2_path, smollm2_source_sha):
    expected = REQUANT_FIXTURE["formats"][name]
    n_hex = len(expected["digests"][0])
    path = requantized(smollm2_path, smollm2_source_sha, T[name])
    names = REQUANT_FIXTURE["tensors"]
    with GGUFFile(path) as f:
        assert list(f.tensors) == names  # llama.cpp's order
        types = [t.ggml_type.name for t in f.tensors.values()]
        digests = [hashlib.sha256(np.ascontiguousarray(t.data)).hexdigest() for t in f.tensors.values()]
    digests = [d[:n_hex] for d in digests]
    wrong_type = [(n, a, b) for n, a, b in zip(names, types, expected["types"]) if a != b]
    assert not wrong_type, f"{len(wrong_type)} tensors differ in type (ours, llama.cpp's), e.g. {wrong_type[:3]}"
    wrong = [(n, t) for n, t, a, b in zip(names, types, digests, expected["digests"]) if a != b]
    assert not wrong, f"{len(wrong)} tensors differ from llama.cpp's bytes (name, type), e.g. {wrong[:5]}"
    assert _file_sha256(path) == expected["file_sha256"]  # metadata too: the very same file


@pytest.mark.parametrize("name", list(REQUANT_FIXTURE["formats"]))
def test_requantized_smollm2_matches_llama_cpp_logits(name, smollm2_path, smollm2_source_sha):
    """Teacher-forced logits of each re-quantized file on the Numba backend against llama.cpp's own run of
    the same file (prompt + llama.cpp's greedy continuation, its top-8 logits per position)."""
    from reference_model import agreement

    from edgeinfer.arch import build_model
    from edgeinfer.engine.kv_cache import KVCache
    from edgeinfer.kernels import get_backend

    theirs = REQUANT_FIXTURE["formats"][name]["logits"]
    fixture = {k: np.asarray(theirs[k]) for k in ("ids", "top_ids", "top_logits")}
    with GGUFFile(requantized(smollm2_path, smollm2_source_sha, T[name])) as f:
        model = build_model(f, get_backend("numba"))
        logits = model.forward(fixture["ids"], KVCache.for_model(model, 128))
    a = agreement(logits, fixture)
    own = theirs["batch_vs_seq_top1_mean_abs"]  # llama.cpp's batch run against its own token-by-token run
    print(name, a, "llama.cpp batch vs sequential:", own)
    assert a["argmax"] >= 0.98, a
    # comparable to llama.cpp's own batch-vs-sequential gap; Q2_K, the coarsest format, amplifies any
    # float-order difference most (measured 0.29-0.32 against its own 0.19), hence 1.75x rather than 1.5x
    assert a["top1_mean"] <= max(0.2, 1.75 * own), a
    assert a["top1_max"] <= 2.0, a
