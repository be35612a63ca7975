"""The small ops of a layer (RMSNorm, RoPE, attention, GLU) on every backend against the numpy oracle
(edgeinfer.kernels.numpy_ops), on odd shapes, windows and extreme values."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from edgeinfer.kernels import get_backend, numpy_ops
from edgeinfer.kernels.numba import ops as nops

BACKENDS = ["numba", "reference"]
try:  # the native backend inherits the Numba ops; run them through it too where it is built
    from edgeinfer.kernels.native import available as _native_available

    if _native_available():
        BACKENDS.append("native")
except ImportError:  # pragma: no cover - a tree without the native package
    pass


@pytest.fixture(params=BACKENDS)
def backend(request):
    return get_backend(request.param, n_threads=2) if request.param != "reference" else get_backend("reference")


def _rel(a, b):
    return float(np.abs(a - b).max() / max(1e-30, np.abs(b).max()))


@pytest.mark.parametrize("shape", [(1, 576), (7, 640), (3, 4, 64), (300, 256)])
def test_rms_norm(backend, shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    got = backend.rms_norm(x, w, 1e-6)
    assert got.shape == shape and got.dtype == np.float32
    assert _rel(got, numpy_ops.rms_norm(x, w, 1e-6)) < 2e-6
    # a non-contiguous input (a column slice) is fine
    wide = np.concatenate([x, x], axis=-1)
    assert _rel(backend.rms_norm(wide[..., : shape[-1]], w, 1e-6), got) < 1e-6


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n_rot,head_dim", [(64, 64), (32, 64), (16, 24)])
def test_rope(backend, neox, n_rot, head_dim):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, head_dim)).astype(np.float32)
    pos = np.array([0, 1, 7, 300, 2], np.int32)
    ang = np.arange(301)[:, None] * 10000.0 ** (-2.0 * np.arange(n_rot // 2) / n_rot)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    got = backend.rope(x, pos, cos, sin, n_rot, neox)
    want = numpy_ops.rope(x, pos, cos, sin, n_rot, neox)
    assert np.allclose(got, want, atol=1e-6)
    assert np.array_equal(got[:, :, n_rot:], x[:, :, n_rot:])  # past n_rot nothing rotates
    assert np.array_equal(got[0], x[0])  # position 0: the identity


def _kv(rng, n_kv, n_head_kv, head_dim, head_dim_v):
    k = rng.standard_normal((n_kv, n_head_kv, head_dim)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_head_kv, head_dim_v)).astype(np.float32)
    return k, v


@pytest.mark.parametrize(
    "n,n_kv,n_head,n_head_kv,head_dim,head_dim_v,n_swa",
    [
        (1, 1, 4, 1, 16, 16, 0),
        (1, 37, 9, 3, 64, 64, 0),
        (1, 300, 4, 1, 256, 256, 16),
        (5, 12, 6, 2, 8, 12, 0),
        (40, 40, 9, 3, 64, 64, 0),
        (33, 70, 4, 4, 32, 32, 9),
    ],
)
def test_attention(backend, n, n_kv, n_head, n_head_kv, head_dim, head_dim_v, n_swa):
    rng = np.random.default_rng(n * 1000 + n_kv)
    q = rng.standard_normal((n, n_head, head_dim)).astype(np.float32)
    k_c, v = _kv(rng, n_kv, n_head_kv, head_dim, head_dim_v)
    kv_pos = np.arange(n_kv, dtype=np.int32)
    q_pos = kv_pos[n_kv - n :]
    got = backend.attention(q, k_c, v, q_pos, kv_pos, n_swa, 1 / np.sqrt(head_dim))
    want = numpy_ops.attention(q, k_c, v, q_pos, kv_pos, n_swa, 1 / np.sqrt(head_dim))
    assert got.shape == (n, n_head * head_dim_v)
    assert np.allclose(got, want, atol=2e-6, rtol=1e-5)


def test_attention_window_and_batch_invariance(backend):
    """A token's output is the same whether it came alone or in a batch, and the window matters."""
    rng = np.random.default_rng(5)
    n_kv, n = 50, 20
    q = rng.standard_normal((n, 4, 32)).astype(np.float32)
    k_c, v = _kv(rng, n_kv, 2, 32, 32)
    kv_pos = np.arange(n_kv, dtype=np.int32)
    q_pos = kv_pos[-n:]
    batch = backend.attention(q, k_c, v, q_pos, kv_pos, 8, 0.2)
    for t in (0, 7, 19):
        alone = backend.attention(q[t : t + 1], k_c, v, q_pos[t : t + 1], kv_pos, 8, 0.2)
        if backend.name == "reference":  # numpy's BLAS sums in an order that depends on the shape
            assert np.allclose(alone[0], batch[t], atol=1e-6)
        else:
            assert np.array_equal(alone[0], batch[t])
    assert not np.allclose(batch, backend.attention(q, k_c, v, q_pos, kv_pos, 0, 0.2))


def test_attention_extreme_scores(backend):
    """Scores far beyond float32's exp range give a softmax of one winner, no inf or nan."""
    rng = np.random.default_rng(6)
    q = (rng.standard_normal((2, 2, 8)) * 100).astype(np.float32)
    k_c, v = _kv(rng, 10, 1, 8, 8)
    k_c *= 100
    pos = np.arange(10, dtype=np.int32)
    got = backend.attention(q, k_c, v, pos[-2:], pos, 0, 1.0)
    assert np.isfinite(got).all()
    assert np.allclose(got, numpy_ops.attention(q, k_c, v, pos[-2:], pos, 0, 1.0), atol=1e-5)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("n,f", [(1, 1536), (3, 17), (64, 2048)])
def test_glu(backend, act, n, f):
    rng = np.random.default_rng(2)
    gu = (rng.standard_normal((n, 2 * f)) * 4).astype(np.float32)
    gu[0, :6] = [-200, -90, -88, 88, 90, 200]  # beyond exp's range either way
    got = backend.glu(gu, act)
    want = numpy_ops.glu(gu, act)
    assert got.shape == (n, f) and np.isfinite(got).all()
    assert np.allclose(got, want, rtol=2e-6, atol=1e-6)


def test_exp32_accuracy_and_range():
    exp = njit(lambda a: np.array([nops._exp32(v) for v in a], np.float32))
    x = np.linspace(-100, 100, 400_001).astype(np.float32)
    got = exp(x).astype(np.float64)
    ref = np.exp(x.astype(np.float64))
    normal = (x >= -87.3) & (x <= 88.0)  # the range it promises; 0 below, inf from 88.03 on
    assert np.max(np.abs(got[normal] - ref[normal]) / ref[normal]) < 4e-7
    assert got[0] == 0.0 and got[-1] == np.inf and (got[x > 88.72] == np.inf).all()
    assert exp(np.array([-np.inf, 0.0], np.float32)).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("neox,n_rot", [(False, 16), (True, 16), (True, 8)])
def test_qkv_store(backend, qk_norm, neox, n_rot):
    """The fused QK-norm + rope + cache write equals the ops one by one; K and V land in the given
    cells (a paged cache's, not in order) and nowhere else."""
    rng = np.random.default_rng(9)
    n, H, Hkv, D, Dv, cap = 3, 4, 2, 16, 12, 10
    cells = np.array([7, 2, 5], np.int32)
    qkv = rng.standard_normal((n, H * D + Hkv * D + Hkv * Dv)).astype(np.float32)
    pos = np.array([5, 6, 9], np.int32)
    ang = np.arange(12)[:, None] * 100.0 ** (-2.0 * np.arange(n_rot // 2) / n_rot)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    qw = rng.standard_normal(D).astype(np.float32) if qk_norm else None
    kw = rng.standard_normal(D).astype(np.float32) if qk_norm else None
    k_c = np.zeros((cap, Hkv, D), np.float32)
    v = np.zeros((cap, Hkv, Dv), np.float32)
    q = backend.qkv_store(qkv, H, Hkv, D, Dv, pos, cos, sin, n_rot, neox, qw, kw, 1e-6, k_c, v, cells)
    q_ref = qkv[:, : H * D].reshape(n, H, D)
    k_ref = qkv[:, H * D : H * D + Hkv * D].reshape(n, Hkv, D)
    if qk_norm:
        q_ref, k_ref = numpy_ops.rms_norm(q_ref, qw, 1e-6), numpy_ops.rms_norm(k_ref, kw, 1e-6)
    assert np.allclose(q, numpy_ops.rope(q_ref, pos, cos, sin, n_rot, neox), atol=2e-6)
    k_rot = numpy_ops.rope(k_ref, pos, cos, sin, n_rot, neox)
    assert np.allclose(k_c[cells], k_rot, atol=2e-6)
    assert np.array_equal(v[cells], qkv[:, H * D + Hkv * D :].reshape(n, Hkv, Dv))
    others = np.setdiff1d(np.arange(cap), cells)
    assert not k_c[others].any() and not v[others].any()  # nothing else
