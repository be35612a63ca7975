"""The Numba backend's matrix products against two oracles:

(a) a numpy emulation of llama.cpp's algorithm (activations quantized by the numpy Q8_0 / Q8_1 / Q8_K
    references, exact integer dot products per block, float64 scales): agreement to 1e-5;
(b) dequantize(W) @ x in float64: agreement within a bound derived from the 8-bit rounding of x.

Weights are random (quantized by edgeinfer.quant, or random blocks with sane fp16 scales where no
quantizer exists) and real tensors of the two real models.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T

from edgeinfer import quant
from edgeinfer.errors import UnsupportedTypeError
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels import get_backend
from edgeinfer.kernels.base import QTensor
from edgeinfer.kernels.numba import NumbaBackend, simd, x8
from edgeinfer.kernels.numba import matmul as nm
from edgeinfer.quant.base import bits, nibbles
from edgeinfer.quant.iquants import KVALUES_IQ4NL
from edgeinfer.quant.kquants import Q3_K, unpack_scale_min_k4

MATMUL_TYPES = [
    T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
]  # fmt: skip
LEGACY = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL}
WITH_MIN = {T.Q4_1, T.Q5_1}  # against Q8_1
FLOATS = {T.F32, T.F16, T.BF16}
REL_EMULATION = 1e-5


def type_id(t: T) -> str:
    return t.name


# -- weights and activations ---------------------------------------------------------------------------


def random_weight(ggml_type: T, n_rows: int, n_cols: int, seed: int = 0) -> QTensor:
    """A random weight: normal values quantized by edgeinfer.quant (floats and the legacy formats but
    IQ4_NL), else random blocks whose fp16 scales are sane (normal * 0.02, with a 0, a -0, a subnormal)."""
    rng = np.random.default_rng(seed)
    fmt = quant.get_format(ggml_type)
    if ggml_type in FLOATS | LEGACY - {T.IQ4_NL}:
        raw = quant.quantize(rng.standard_normal((n_rows, n_cols)).astype(np.float32), ggml_type)
    else:
        n_blocks = n_rows * n_cols // fmt.block_size
        raw = rng.integers(0, 256, n_blocks * fmt.type_size, dtype=np.uint8)
        blocks = raw.view(fmt.block_dtype)
        for name in blocks.dtype.names:
            if blocks.dtype.fields[name][0] == np.dtype("<f2"):
                blocks[name] = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16)
                blocks[name][:3] = np.array([0.0, -0.0, 2.0**-20], np.float16)[: min(3, n_blocks)]
        raw = raw.reshape(n_rows, -1)
    return QTensor(f"random {ggml_type.name}", ggml_type, (n_cols, n_rows), raw)


def random_x(n_tokens: int, n_cols: int, seed: int = 1) -> np.ndarray:
    """Activations with the spread of real ones: normal, some large outliers, a zero block."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tokens, n_cols)).astype(np.float32)
    x[:, rng.integers(0, n_cols, max(1, n_cols // 64))] *= 20
    if n_cols >= 512:
        x[0, 256:512] = 0  # a whole Q8_K block of zeros
    return x


def cols_for(ggml_type: T) -> int:
    return 768 if ggml_type in LEGACY | FLOATS else 1024


# -- (a) the numpy emulation of ggml's algorithm -------------------------------------------------------


def quantize_q8_0(x: np.ndarray):
    """quantize_row_q8_0_ref: int8 quants (n_tokens, n_blocks, 32), fp16-rounded scales (n_tokens,
    n_blocks)."""
    b = quant.quantize(x, T.Q8_0).reshape(-1).view(quant.get_format(T.Q8_0).block_dtype)
    n_tokens = x.shape[0]
    return b["qs"].reshape(n_tokens, -1, 32).astype(np.int64), b["d"].astype(np.float64).reshape(n_tokens, -1)


def quantize_q8_1(x: np.ndarray):
    """quantize_row_q8_1_ref: as Q8_0, plus s = fp16(sum of quants * d) with d the float32 scale."""
    q, d = quantize_q8_0(x)
    d32 = np.abs(x.reshape(x.shape[0], -1, 32)).max(axis=-1) / np.float32(127)
    s = (q.sum(axis=-1).astype(np.float32) * d32).astype(np.float16).astype(np.float64)
    return q, d, s


def quantize_q8_k(x: np.ndarray):
    """quantize_row_q8_K_ref: int8 quants (n_tokens, n_blocks, 256), float32 scales, sums of 16."""
    b = quant.quantize(x, T.Q8_K).reshape(-1).view(quant.get_format(T.Q8_K).block_dtype)
    n_tokens = x.shape[0]
    q = b["qs"].reshape(n_tokens, -1, 256).astype(np.int64)
    bsums = b["bsums"].reshape(n_tokens, -1, 16).astype(np.int64)
    assert np.array_equal(bsums, q.reshape(n_tokens, -1, 16, 16).sum(axis=-1))
    return q, b["d"].astype(np.float64).reshape(n_tokens, -1), bsums


def integer_parts(w: QTensor):
    """W as ggml's dot products see it, per block b of row r:
    q int (n_rows, n_blocks, block_size)   the quants (signed where ggml's code makes them signed)
    scale int (n_rows, n_blocks, 16)       K-quants: integer scale of each run of 16 quants (else None)
    mins int (n_rows, n_blocks, 16)        Q2_K/Q4_K/Q5_K: integer min of each run of 16 (else None)
    d, dmin float64 (n_rows, n_blocks)     block scales (dmin: the min's scale, or m for Q4_1/Q5_1)"""
    fmt = quant.get_format(w.ggml_type)
    b = fmt.blocks(w.raw)
    n, n_rows = len(b), w.n_rows
    f16 = lambda name: b[name].astype(np.float64)  # noqa: E731
    scale = mins = dmin = None
    ty = w.ggml_type
    if ty in (T.Q4_0, T.Q4_1, T.IQ4_NL):
        q = nibbles(b["qs"]).astype(np.int64)
        q = {T.Q4_0: q - 8, T.Q4_1: q, T.IQ4_NL: KVALUES_IQ4NL[q].astype(np.int64)}[ty]
    elif ty in (T.Q5_0, T.Q5_1):
        q = (nibbles(b["qs"]) | (bits(b["qh"], 32) << 4)).astype(np.int64) - (16 if ty == T.Q5_0 else 0)
    elif ty == T.Q8_0:
        q = b["qs"].astype(np.int64)
    elif ty in (T.Q2_K, T.Q3_K):
        qs = b["qs"].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        q = (qs & 3).reshape(n, 8, 32).astype(np.int64)
        if ty == T.Q2_K:
            scale, mins, dmin = b["scales"] & 0x0F, b["scales"] >> 4, f16("dmin")
        else:
            q -= 4 * (1 - bits(b["hmask"], 8).transpose(0, 2, 1))
            scale = Q3_K.unpack_scales(b["scales"]).astype(np.int64) - 32
    elif ty in (T.Q4_K, T.Q5_K):
        q = nibbles(b["qs"].reshape(n, 4, 32)).reshape(n, 8, 32).astype(np.int64)
        if ty == T.Q5_K:
            q += 16 * bits(b["qh"], 8).transpose(0, 2, 1)
        sc, mn = unpack_scale_min_k4(b["scales"])
        scale, mins, dmin = np.repeat(sc, 2, axis=-1), np.repeat(mn, 2, axis=-1), f16("dmin")
    elif ty == T.Q6_K:
        ql = b["ql"].reshape(n, 2, 1, 2, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1, 1)
        qh = b["qh"].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
        q = ((ql & 0x0F).reshape(n, 2, 4, 32) | ((qh & 3) << 4)).astype(np.int64) - 32
        scale = b["scales"]
    elif ty == T.IQ4_XS:
        q = KVALUES_IQ4NL[nibbles(b["qs"].reshape(n, 8, 16))].astype(np.int64)
        low = np.stack([b["scales_l"] & 0x0F, b["scales_l"] >> 4], axis=-1).reshape(n, 8)
        high = (b["scales_h"][:, None] >> np.arange(0, 16, 2, dtype=np.uint16)) & 3
        scale = np.repeat((low | (high << 4)).astype(np.int64) - 32, 2, axis=-1)
    else:
        raise AssertionError(ty)
    if ty in WITH_MIN:
        dmin = f16("m")
    shape = (n_rows, -1)
    q = q.reshape(n_rows, -1, fmt.block_size)
    as_int = lambda a: None if a is None else a.astype(np.int64).reshape(n_rows, -1, 16)  # noqa: E731
    d = f16("d").reshape(shape)
    return q, as_int(scale), as_int(mins), d, None if dmin is None else dmin.reshape(shape)


def emulate(w: QTensor, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's result for x @ W.T, and the scale of its float rounding (the sum over every integer
    product of |product * its float scales|, since the kernels sum products in lanes before scaling):
    float64 (n_tokens, n_rows) each."""
    ty = w.ggml_type
    if ty in FLOATS:
        wf = quant.dequantize(w.raw, ty, w.shape).astype(np.float64)
        xr = x if ty == T.F32 else quant.dequantize(quant.quantize(x, ty), ty, x.shape)
        return xr.astype(np.float64) @ wf.T, np.abs(xr.astype(np.float64)) @ np.abs(wf).T
    q, scale, mins, d, dmin = integer_parts(w)
    if ty in LEGACY:
        yq, yd, *ys = quantize_q8_1(x) if ty in WITH_MIN else quantize_q8_0(x)
        dd = d[None] * yd[:, None]  # (n_tokens, n_rows, n_blocks)
        terms = np.einsum("rbj,tbj->trb", q, yq) * dd
        sizes = np.abs(np.einsum("rbj,tbj->trb", np.abs(q), np.abs(yq)) * dd)
        if ty in WITH_MIN:
            ms = dmin[None] * ys[0][:, None]
            terms, sizes = terms + ms, sizes + np.abs(ms)
    else:
        yq, yd, bsums = quantize_q8_k(x)
        n_rows, nb = d.shape
        q16, y16 = q.reshape(n_rows, nb, 16, 16), yq.reshape(len(x), nb, 16, 16)
        dd = d[None] * yd[:, None]
        terms = np.einsum("rbsj,tbsj,rbs->trb", q16, y16, scale) * dd
        sizes = np.abs(np.einsum("rbsj,tbsj,rbs->trb", np.abs(q16), np.abs(y16), np.abs(scale)) * dd)
        if mins is not None:
            dm = dmin[None] * yd[:, None]
            terms -= np.einsum("rbs,tbs->trb", mins, bsums) * dm
            sizes += np.abs(np.einsum("rbs,tbs->trb", mins, np.abs(bsums)) * dm)
    return terms.sum(axis=-1), sizes.sum(axis=-1)


def assert_matches_emulation(w: QTensor, x: np.ndarray, y: np.ndarray) -> None:
    expected, magnitude = emulate(w, x)
    err = np.abs(y.astype(np.float64) - expected)
    bad = err > REL_EMULATION * magnitude + 1e-30
    assert not bad.any(), (
        f"{w.name}: {bad.sum()} of {bad.size} outputs differ from the emulation by more than "
        f"{REL_EMULATION} of their products' magnitude; worst {np.max(err / (magnitude + 1e-30)):.2e}"
    )


# -- (b) against dequantize(W) @ x in float64 ----------------------------------------------------------


def rounding_bound(w: QTensor, x: np.ndarray, wf: np.ndarray) -> np.ndarray:
    """A bound on |ggml's result - W x| from the rounding of x (8-bit quants, fp16 or bf16), per output."""
    ty = w.ggml_type
    n_tokens, n_cols = x.shape
    absx = np.abs(x.astype(np.float64))
    if ty in FLOATS:
        e = absx * {T.F32: 0.0, T.F16: 2.0**-11, T.BF16: 2.0**-8}[ty]
    else:
        bs = 32 if ty in LEGACY else 256
        block_max = absx.reshape(n_tokens, -1, bs).max(axis=-1, keepdims=True) / 127
        # half a quant step, plus for Q8_0 / Q8_1 the fp16 rounding of the scale (127 steps of 2^-11)
        e = np.broadcast_to(
            block_max * (0.5 + (0 if bs == 256 else 127 * 2.0**-11)), (n_tokens, n_cols // bs, bs)
        )
        e = e.reshape(n_tokens, n_cols) * 1.001
    bound = e @ np.abs(wf).T + 2e-6 * (absx @ np.abs(wf).T)  # + float32 rounding of the sums
    if ty in WITH_MIN:  # m * s, s = fp16(d * sum of quants) instead of m * sum of x
        _, _, _, _, m = integer_parts(w)
        block_abs = absx.reshape(n_tokens, -1, 32).sum(axis=-1)
        bound += 2.0**-8 * (block_abs @ np.abs(m).T)
    return bound


def assert_close_to_float(w: QTensor, x: np.ndarray, y: np.ndarray) -> None:
    wf = quant.dequantize(w.raw, w.ggml_type, w.shape).astype(np.float64)
    expected = x.astype(np.float64) @ wf.T
    err = np.abs(y - expected)
    bound = rounding_bound(w, x, wf)
    assert (err <= bound).all(), f"{w.name}: worst error / bound {np.max(err / bound):.3f}"
    # and the bound is no vacuous one: the error is small against the outputs' size
    assert np.linalg.norm(err) <= 0.05 * np.linalg.norm(expected)


# -- random weights, every format ----------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [1, 3, 17])
@pytest.mark.parametrize("ggml_type", MATMUL_TYPES, ids=type_id)
def test_matmul_random(ggml_type, n_tokens):
    n_cols = cols_for(ggml_type)
    w = random_weight(ggml_type, 37, n_cols, seed=n_tokens)
    x = random_x(n_tokens, n_cols, seed=n_tokens)
    y = nm.matmul(w, x)
    assert y.dtype == np.float32 and y.shape == (n_tokens, 37)
    assert_matches_emulation(w, x, y)
    assert_close_to_float(w, x, y)


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q4_0, T.Q6_K], ids=type_id)
def test_matmul_random_blocks_extremes(ggml_type):
    """Every byte pattern of random blocks (Q8_0 quants of -128 too) against the emulation."""
    fmt = quant.get_format(ggml_type)
    rng = np.random.default_rng(5)
    n_rows, n_cols = 16, 512
    raw = rng.integers(0, 256, (n_rows, n_cols // fmt.block_size * fmt.type_size), dtype=np.uint8)
    blocks = raw.reshape(-1).view(fmt.block_dtype)
    blocks["d"] = (rng.standard_normal(len(blocks)) * 0.05).astype(np.float16)
    w = QTensor("random blocks", ggml_type, (n_cols, n_rows), raw)
    x = random_x(5, n_cols, seed=7)
    assert_matches_emulation(w, x, nm.matmul(w, x))


def test_activation_quantizers_match_the_references():
    """The kernels' Q8_0 / Q8_1 / Q8_K / F16 / BF16 activations equal the numpy references bit for bit,
    ties and zero blocks included."""
    x = random_x(3, 1024, seed=3)
    x[1, :32] = np.linspace(-127, 127, 32, dtype=np.float32) / 2  # halves of quant steps: roundf's ties
    x[2, :256] = np.arange(256, dtype=np.float32) - 128.5  # Q8_K: rint ties, a negative maximum
    x[2, 300] = -1e-30
    yq, yd, ys, ybs, yf, yqs = nm._quantize_activations(x, nm.ACT_Q8_1)
    q, d, s = quantize_q8_1(x)
    assert np.array_equal(yqs.reshape(d.shape), q.reshape(*d.shape, -1).astype(np.int32).sum(-1))
    assert np.array_equal(yq.reshape(q.shape), q)
    assert np.array_equal(yd.reshape(d.shape), d.astype(np.float32))
    assert np.array_equal(ys[:-8].reshape(s.shape), s.astype(np.float32)) and not ys[-8:].any()
    yq, yd, ys, ybs, yf, yqs = nm._quantize_activations(x, nm.ACT_Q8_0)
    assert np.array_equal(yq.reshape(q.shape), q) and ys.size == 0 and ybs.size == 0
    yq, yd, ys, ybs, yf, yqs = nm._quantize_activations(x, nm.ACT_Q8_K)
    q, d, bsums = quantize_q8_k(x)
    assert np.array_equal(yq.reshape(q.shape), q)
    assert np.array_equal(yd.reshape(d.shape), d.astype(np.float32))
    assert np.array_equal(ybs.reshape(bsums.shape), bsums)
    for kind, ty in ((nm.ACT_F16, T.F16), (nm.ACT_BF16, T.BF16)):
        yf = nm._quantize_activations(x, kind)[4]
        assert np.array_equal(yf.reshape(x.shape), quant.dequantize(quant.quantize(x, ty), ty, x.shape))


@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q6_K, T.F16], ids=type_id)
def test_threads_give_identical_results(ggml_type):
    n_cols = cols_for(ggml_type)
    w = random_weight(ggml_type, 300, n_cols)
    x = random_x(9, n_cols)
    before = numba.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            results.append((nm.matmul(w, x), nm.matmul(w, x[:1])))
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
    assert np.array_equal(results[0][0][:1], results[0][1])  # a token's result does not depend on its tile


@pytest.mark.parametrize("ggml_type", MATMUL_TYPES, ids=type_id)
def test_batch_invariance(ggml_type):
    """A token's result is bit-identical whether it comes alone (a decode step), in a tile of 4 or in
    the tail of a prefill: the same sums in the same order (speculative decoding relies on it)."""
    w = random_weight(ggml_type, 21, cols_for(ggml_type))
    x = random_x(9, w.n_cols)
    alone = np.concatenate([nm.matmul(w, x[i : i + 1]) for i in range(len(x))])
    assert np.array_equal(nm.matmul(w, x), alone)


def test_threading_layer_is_openmp():
    assert nm.THREADING_LAYER == numba.threading_layer()
    if nm.THREADING_LAYER != "omp":
        pytest.skip(f"no OpenMP runtime here: Numba uses {nm.THREADING_LAYER} (a warning said so)")


# -- real tensors --------------------------------------------------------------------------------------


def real_slices(path: str, types: set[T]):
    """Per weight type of the file: a slice of rows of its first 2-D tensor and of its largest one."""
    f = GGUFFile(path)
    by_type: dict[T, list] = {}
    for t in f.tensors.values():
        if len(t.ne) == 2:
            by_type.setdefault(t.ggml_type, []).append(t)
    assert types <= set(by_type)
    for ty in sorted(types):
        first, largest = by_type[ty][0], max(by_type[ty], key=lambda t: t.n_bytes)
        for info in {first.name: first, largest.name: largest}.values():
            w = QTensor.from_tensor_info(info)
            start = w.n_rows // 2
            rows = w.raw[start : start + 48]
            yield QTensor(f"{info.name}[{start}:]", ty, (w.n_cols, rows.shape[0]), rows)


@pytest.mark.parametrize(
    "path_fixture, types",
    [("smollm2_path", {T.Q4_1, T.Q8_0}), ("gemma3_path", {T.Q5_0, T.Q4_K, T.Q6_K, T.Q8_0})],
)
def test_real_tensors(path_fixture, types, request):
    for w in real_slices(request.getfixturevalue(path_fixture), types):
        for n_tokens in (1, 6):
            x = random_x(n_tokens, w.n_cols, seed=n_tokens)
            y = nm.matmul(w, x)
            assert_matches_emulation(w, x, y)
            assert_close_to_float(w, x, y)


def test_real_model_full_matrix(smollm2_path):
    """A whole real matrix (all 1536 rows of an ffn_up, 576 columns) in a decode and a prefill step."""
    w = QTensor.from_tensor_info(GGUFFile(smollm2_path).tensors["blk.3.ffn_up.weight"])
    assert w.raw.flags.writeable is False  # zero-copy from the mmap
    x = random_x(13, w.n_cols)
    assert_matches_emulation(w, x, nm.matmul(w, x))
    assert_matches_emulation(w, x[:1], nm.matmul(w, x[:1]))


# -- input handling ------------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors():
    w = random_weight(T.Q4_0, 8, 64)
    x = random_x(2, 64)
    with pytest.raises(ValueError, match=r"x has shape \(2, 32\), expected \(n_tokens, 64\)"):
        nm.matmul(w, x[:, :32])
    with pytest.raises(ValueError, match="expected"):
        nm.matmul(w, x[0])  # 1-D
    with pytest.raises(TypeError, match="floats"):
        nm.matmul(w, np.ones((2, 64), np.int64))  # token ids passed by mistake
    with pytest.raises(ValueError, match="out must be"):
        nm.matmul(w, x, out=np.empty((2, 8), np.float64))
    with pytest.raises(ValueError, match="out must be"):
        nm.matmul(w, x, out=np.empty((8, 2), np.float32))
    with pytest.raises(ValueError, match="2-D weight"):
        nm.matmul(QTensor("experts", T.Q4_0, (64, 4, 2), np.zeros((2, 4, 36), np.uint8)), x)
    with pytest.raises(ValueError, match=r"needs raw uint8 of shape \(8, 36\)"):
        nm.matmul(QTensor("bad", T.Q4_0, (64, 8), np.zeros((8, 40), np.uint8)), x)
    with pytest.raises(UnsupportedTypeError, match="Q8_K"):
        nm.matmul(QTensor("q8k", T.Q8_K, (256, 1), np.zeros((1, 292), np.uint8)), random_x(1, 256))
    with pytest.raises(UnsupportedTypeError, match="NVFP4"):
        nm.matmul(QTensor("nvfp4", T.NVFP4, (256, 1), np.zeros((1, 144), np.uint8)), random_x(1, 256))


def test_inputs_are_converted():
    w = random_weight(T.Q8_0, 8, 64)
    x = random_x(4, 64)
    expected = nm.matmul(w, x)
    assert np.array_equal(nm.matmul(w, x.astype(np.float64)), expected)
    assert np.array_equal(nm.matmul(w, np.asfortranarray(x)), expected)
    wide = np.zeros((8, 128), np.float32)
    wide[::2, ::2] = x
    assert np.array_equal(nm.matmul(w, wide[::2, ::2]), expected)  # strided view
    out = np.full((4, 8), np.nan, np.float32)
    assert nm.matmul(w, x, out=out) is out and np.array_equal(out, expected)
    square = random_weight(T.Q8_0, 64, 64)
    y = x.copy()
    assert nm.matmul(square, y, out=y) is y  # out may be x itself
    assert np.array_equal(y, nm.matmul(square, x))
    # a weight whose bytes are writeable (not from a file) and not contiguous
    big = random_weight(T.Q8_0, 16, 64)
    sliced = QTensor("every other row", T.Q8_0, (64, 8), big.raw[::2])
    assert np.array_equal(nm.matmul(sliced, x), nm.matmul(big, x)[:, ::2])
    assert nm.matmul(w, np.zeros((0, 64), np.float32)).shape == (0, 8)


# -- get_rows, dequantize, the backend -----------------------------------------------------------------


@pytest.mark.parametrize("ggml_type", MATMUL_TYPES, ids=type_id)
def test_get_rows_and_dequantize(ggml_type):
    w = random_weight(ggml_type, 12, cols_for(ggml_type))
    full = quant.dequantize(w.raw, ggml_type, w.shape)
    assert np.array_equal(nm.dequantize(w), full)
    ids = np.array([3, 0, 11, 3])
    assert np.array_equal(nm.get_rows(w, ids), full[ids])
    assert nm.get_rows(w, np.array([], np.int32)).shape == (0, w.n_cols)


def test_get_rows_bad_ids():
    w = random_weight(T.Q4_0, 12, 64)
    with pytest.raises(IndexError, match="0..11"):
        nm.get_rows(w, np.array([12]))
    with pytest.raises(IndexError):
        nm.get_rows(w, np.array([-1]))
    with pytest.raises(TypeError, match="integers"):
        nm.get_rows(w, np.array([1.0]))


def test_get_rows_real_embedding(gemma3_path):
    w = QTensor.from_tensor_info(GGUFFile(gemma3_path).tensors["token_embd.weight"])
    ids = np.array([2, 262143, 1000])
    expected = quant.dequantize(w.raw[ids], w.ggml_type, (3, w.n_cols))
    assert np.array_equal(NumbaBackend(n_threads=1).get_rows(w, ids), expected)


def test_backend():
    backend = get_backend("numba", n_threads=1)
    assert isinstance(backend, NumbaBackend) and backend.name == "numba" and backend.n_threads == 1
    assert get_backend("reference").name == "reference"
    with pytest.raises(ValueError, match="numba"):
        get_backend("nonesuch")
    w = random_weight(T.Q4_K, 8, 256)
    x = random_x(2, 256)
    assert np.array_equal(backend.matmul(w, x), nm.matmul(w, x))
    assert NumbaBackend().n_threads >= 1
    with pytest.raises(ValueError, match="n_threads"):
        NumbaBackend(n_threads=0)


# -- the portable (non-x86) vector code ----------------------------------------------------------------

_GENERIC_SCRIPT = """
import numpy as np, sys
sys.path.insert(0, {tests!r})
from test_matmul import MATMUL_TYPES, assert_matches_emulation, cols_for, random_weight, random_x
from edgeinfer.kernels.numba import matmul as nm, simd
assert not simd.USE_AVX2
for ty in MATMUL_TYPES:
    w = random_weight(ty, 9, cols_for(ty))
    for n_tokens in (1, 5):
        x = random_x(n_tokens, w.n_cols)
        assert_matches_emulation(w, x, nm.matmul(w, x))
        if ty in nm.X8_KERNELS:  # the row-interleaved kernels (kernels/numba/x8.py)
            assert_matches_emulation(w, x, nm.matmul(nm.prepare(w), x))
print("generic ok")
"""


@pytest.mark.skipif(not simd.USE_AVX2, reason="the generic vector code is what every test above runs")
def test_generic_vector_code():
    """The LLVM IR used where there is no AVX2 (ARM), forced on this machine in a subprocess with its own
    Numba cache (about a minute the first time, seconds after)."""
    env = dict(os.environ, EDGEINFER_GENERIC_SIMD="1")
    # its own cache (the generic IR's entries would replace the AVX2 ones in the shared cache), by sources
    sources = hashlib.sha1(b"".join(Path(m.__file__).read_bytes() for m in (simd, nm, x8))).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"edgeinfer-numba-generic-{sources}"
    for stale in cache.parent.glob("edgeinfer-numba-generic-*"):
        if stale != cache:
            shutil.rmtree(stale, ignore_errors=True)
    env["NUMBA_CACHE_DIR"] = str(cache)
    script = _GENERIC_SCRIPT.format(tests=os.path.dirname(__file__))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0 and "generic ok" in done.stdout, done.stderr[-3000:]
