"""Gemma 2's soft-capped attention (every score s = scale q.k becomes cap * tanh(s / cap) before the mask
and the softmax) compiled: the numpy twin against the formula in float64, the Numba op and the C kernel
(AVX2 and portable) against the twin, a token's bits independent of its batch and the thread count, the
backends' attention_softcap as the model layer calls it."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.kernels import numpy_ops
from edgeinfer.kernels.numba import ops as nops

# the compiled tanh (a rational approximation, a few ulp) against numpy's, carried through the softmax:
# outputs of magnitude ~1 agree to this
ATOL, RTOL = 3e-6, 2e-5

SHAPES = [  # n, n_kv, n_head, n_head_kv, head_dim, n_swa
    (1, 1, 4, 1, 16, 0),
    (1, 37, 8, 2, 64, 0),
    (5, 12, 6, 2, 8, 4),
    (33, 70, 4, 4, 32, 9),
    (3, 29, 4, 2, 13, 0),  # tails: D not a multiple of 8
    (1, 300, 32, 8, 64, 0),  # a decode over enough cells for the parallel path (H x n_kv >= 4096)
    (2, 300, 8, 2, 256, 128),  # Gemma 2's head size
]


def _case(seed, n, n_kv, n_head, n_head_kv, d, kv_type="f32"):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n, n_head, d)) * 3).astype(np.float32)  # scores of tens: the cap bites
    k = rng.standard_normal((n_kv, n_head_kv, d)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_head_kv, d)).astype(np.float32)
    if kv_type == "f16":
        k, v = k.astype(np.float16), v.astype(np.float16)
    kv_pos = np.arange(n_kv, dtype=np.int32)
    return q, k, v, kv_pos[n_kv - n :].copy(), kv_pos


def test_numpy_softcap_is_the_formula():
    """numpy_ops.attention with softcap: softmax over cap * tanh(scale q.k / cap), computed here head by
    head in float64; the cap changes the result (it bites at these scores)."""
    q, k, v, q_pos, kv_pos = _case(1, 6, 20, 4, 2, 16)
    cap, scale = 5.0, 0.5
    got = numpy_ops.attention(q, k, v, q_pos, kv_pos, 5, scale, softcap=cap).reshape(6, 4, 16)
    mask = numpy_ops.causal_mask(q_pos, kv_pos, 5)
    for h in range(4):
        s = q[:, h].astype(np.float64) @ k[:, h // 2].T.astype(np.float64) * scale
        s = np.where(mask, cap * np.tanh(s / cap), -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert np.allclose(got[:, h], p @ v[:, h // 2], atol=1e-5)
    plain = numpy_ops.attention(q, k, v, q_pos, kv_pos, 5, scale).reshape(6, 4, 16)
    assert np.abs(got - plain).max() > 0.1


def test_numba_tanh():
    """The Numba op's tanh against float64's over float32's range: within 6 ulp of the result, x itself
    for tiny x, NaN for NaN."""
    from numba import njit

    @njit
    def tanh_all(x, out):
        for i in range(x.shape[0]):
            out[i] = nops._tanh32(x[i])

    x = np.concatenate([np.linspace(-12, 12, 200001), np.geomspace(1e-8, 10, 20000), [0.0, 1e-30, -3e-4, 80, -1e30]])
    x = np.concatenate([x, -x]).astype(np.float32)
    got = np.empty_like(x)
    tanh_all(x, got)
    want = np.tanh(x.astype(np.float64))
    assert np.all(np.abs(got - want) <= 6 * np.spacing(np.abs(want).astype(np.float32)) + 1e-12)
    tiny = np.abs(x) < 4e-4
    assert np.array_equal(got[tiny], x[tiny])
    tanh_all(np.array([np.nan], np.float32), got[:1])
    assert np.isnan(got[0])


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("n,n_kv,n_head,n_head_kv,head_dim,n_swa", SHAPES)
def test_numba_attention_softcap(n, n_kv, n_head, n_head_kv, head_dim, n_swa, kv_type):
    """The Numba op with softcap against the numpy twin; a token's bits do not depend on its batch;
    softcap 0 is the plain op, bit for bit."""
    q, k, v, q_pos, kv_pos = _case(n * 7 + n_kv, n, n_kv, n_head, n_head_kv, head_dim, kv_type)
    scale = 1.0 / np.sqrt(head_dim)
    want = numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, softcap=4.0)
    got = nops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, softcap=4.0)
    assert np.allclose(got, want, atol=ATOL, rtol=RTOL)
    if n_kv > 1:  # it bites (a softmax over one cell is 1 whatever the score)
        assert np.abs(want - numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, scale)).max() > 1e-3
    assert np.array_equal(got[-1:], nops.attention(q[-1:], k, v, q_pos[-1:], kv_pos, n_swa, scale, softcap=4.0))
    assert np.array_equal(nops.attention(q, k, v, q_pos, kv_pos, n_swa, scale),
                          nops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, softcap=0.0))  # fmt: skip
    with pytest.raises(ValueError):
        nops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, softcap=-1.0)


def _native_available() -> bool:
    from edgeinfer.kernels import native_available

    return native_available()


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("n,n_kv,n_head,n_head_kv,head_dim,n_swa", SHAPES)
def test_native_attention_softcap(native_isa, n, n_kv, n_head, n_head_kv, head_dim, n_swa, kv_type):
    """The C kernel (AVX2 and portable) with softcap against the numpy twin; a token's bits do not depend
    on the batch or the thread count; softcap 0 is the plain kernel; with sinks too."""
    q, k, v, q_pos, kv_pos = _case(n * 7 + n_kv, n, n_kv, n_head, n_head_kv, head_dim, kv_type)
    cells = np.arange(n_kv, dtype=np.int32)
    scale = 1.0 / np.sqrt(head_dim)

    def run(qq, qp, threads=2, cap=4.0, sinks=None):
        out = np.empty((qq.shape[0], n_head * head_dim), np.float32)
        native_isa.attention(qq, k, v, qp, kv_pos, cells, n_swa, scale, out, threads, sinks, cap)
        return out

    got = run(q, q_pos)
    want = numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, softcap=4.0)
    assert np.allclose(got, want, atol=ATOL, rtol=RTOL)
    assert np.array_equal(got, run(q, q_pos, threads=1))
    assert np.array_equal(got[-1:], run(q[-1:], q_pos[-1:]))
    plain = np.empty_like(got)
    native_isa.attention(q, k, v, q_pos, kv_pos, cells, n_swa, scale, plain, 2)
    assert np.array_equal(plain, run(q, q_pos, cap=0.0))
    sinks = np.linspace(-1, 3, n_head).astype(np.float32)
    both = numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, scale, softcap=4.0, sinks=sinks)
    assert np.allclose(run(q, q_pos, sinks=sinks), both, atol=ATOL, rtol=RTOL)


def test_native_softcap_is_checked(native_isa):
    q, k, v, q_pos, kv_pos = _case(3, 1, 8, 4, 2, 16)
    cells = np.arange(8, dtype=np.int32)
    out = np.empty((1, 4 * 16), np.float32)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            native_isa.attention(q, k, v, q_pos, kv_pos, cells, 0, 0.25, out, 2, None, bad)


@pytest.mark.parametrize("backend", ["reference", "numba", "native"])
def test_backend_attention_softcap(backend):
    """attention_softcap of several sequences (continuous batching, one C job on native): each gets what
    attention() gives it alone with the cap, within the stated rounding of the numpy twin."""
    from edgeinfer.kernels import get_backend
    from edgeinfer.kernels.reference import ReferenceBackend

    if backend == "native" and not _native_available():
        pytest.skip("edgeinfer._native is not built")
    b = ReferenceBackend() if backend == "reference" else get_backend(backend, n_threads=2)
    cases = [_case(i, n, n_kv, 8, 2, 64) for i, (n, n_kv) in enumerate([(1, 37), (5, 12), (1, 300), (20, 20)])]
    items = [(q, k, v, qp, kp, None) for q, k, v, qp, kp in cases]
    got = b.attention_softcap(items, 0, 0.125, 3.0)
    alone = [b.attention_softcap([it], 0, 0.125, 3.0)[0] for it in items]
    for (q, k, v, qp, kp), out, one in zip(cases, got, alone):
        assert np.array_equal(out, one)
        assert np.allclose(out, numpy_ops.attention(q, k, v, qp, kp, 0, 0.125, softcap=3.0), atol=ATOL, rtol=RTOL)
