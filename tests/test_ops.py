"""The small ops of a layer (RMSNorm, RoPE, attention, GLU) on every backend against the numpy oracle
(edgeinfer.kernels.numpy_ops), on odd shapes, windows and extreme values."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from edgeinfer.kernels.base import HeadSpec
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
    q = backend.qkv_store(qkv, HeadSpec(H, Hkv, D, Dv, n_rot, neox, qw, kw, 1e-6), pos, cos, sin, k_c, v, cells)
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


# -- K/V in f16 and q8_0 (edgeinfer.nn.kv's KV_TYPES) ---------------------------------------------------


def _store(kv_type, x):
    """float32 rows (..., head_dim) into fresh storage of kv_type, by the numpy reference."""
    from edgeinfer.nn.kv import KV_TYPES

    t = KV_TYPES[kv_type]
    store = np.zeros((*x.shape[:-1], t.row_size(x.shape[-1])), t.dtype)
    numpy_ops.kv_store(store, slice(None), x)
    return store


def test_kv_store_rounding():
    """f16: numpy's round to nearest even; q8_0: ggml's block_q8_0 bytes as gguf-py quantizes them (its
    quantize_row_q8_0_ref), on values that hit ties: zero blocks, halves after the scale, one outlier."""
    import gguf.quants

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 64)).astype(np.float32)
    x[0, 0, :32] = 0.0  # d = 0
    x[1, 0, :32] = np.arange(32, dtype=np.float32) - 15.5  # amax 15.5: x * 127 / 15.5 lands on halves
    x[2, 1, 32:] = 0.0
    x[2, 1, 40] = -1e4  # one outlier: the rest of its block rounds to 0
    f16 = _store("f16", x)
    assert f16.dtype == np.float16 and np.array_equal(f16, x.astype(np.float16))
    q8 = _store("q8_0", x)
    assert q8.dtype == np.uint8 and q8.shape == (6, 2, 68)
    assert np.array_equal(q8, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0))
    back = numpy_ops.kv_rows_f32(q8)
    assert np.array_equal(back, gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0))
    assert np.abs(back - x).max() <= np.abs(x).max() / 127  # half a step of the largest block


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_qkv_store_rounds_as_the_reference(backend, kv_type, qk_norm):
    """qkv_store into f16 / q8_0 storage writes the bytes the numpy reference writes of the same K and V
    (computed in float32, rounded once); nothing outside the cells."""
    rng = np.random.default_rng(10)
    n, H, Hkv, D, Dv, cap, n_rot = 4, 4, 2, 32, 64, 9, 32
    cells = np.array([7, 2, 5, 0], np.int32)
    qkv = rng.standard_normal((n, H * D + Hkv * D + Hkv * Dv)).astype(np.float32)
    pos = np.array([3, 4, 5, 6], np.int32)
    ang = np.arange(8)[:, None] * 100.0 ** (-2.0 * np.arange(n_rot // 2) / n_rot)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    qw = rng.standard_normal(D).astype(np.float32) if qk_norm else None
    kw = rng.standard_normal(D).astype(np.float32) if qk_norm else None
    k32, v32 = np.zeros((cap, Hkv, D), np.float32), np.zeros((cap, Hkv, Dv), np.float32)
    q32 = backend.qkv_store(qkv, HeadSpec(H, Hkv, D, Dv, n_rot, True, qw, kw, 1e-6), pos, cos, sin, k32, v32, cells)
    k, v = _store(kv_type, np.zeros((cap, Hkv, D), np.float32)), _store(kv_type, np.zeros((cap, Hkv, Dv), np.float32))
    q = backend.qkv_store(qkv, HeadSpec(H, Hkv, D, Dv, n_rot, True, qw, kw, 1e-6), pos, cos, sin, k, v, cells)
    assert np.array_equal(q, q32)
    assert np.array_equal(k, _store(kv_type, k32)) and np.array_equal(v, _store(kv_type, v32))


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
@pytest.mark.parametrize("n,n_kv,n_swa", [(1, 1, 0), (1, 37, 0), (1, 300, 16), (40, 40, 0), (33, 70, 9)])
def test_attention_reads_f16_and_q8_0(backend, kv_type, n, n_kv, n_swa):
    """Attention over f16 / q8_0 storage, read through a paged cache's cells: each backend gives the bits
    it gives on the same values in float32 (a row is converted exactly as it is read); all agree with the
    numpy reference to float32 rounding."""
    rng = np.random.default_rng(n * 100 + n_kv)
    H, Hkv, D = 9, 3, 64
    q = rng.standard_normal((n, H, D)).astype(np.float32)
    k32, v32 = _kv(rng, 2 * n_kv + 5, Hkv, D, D)
    k, v = _store(kv_type, k32), _store(kv_type, v32)
    cells = rng.permutation(2 * n_kv + 5)[:n_kv].astype(np.int32)
    kv_pos = np.arange(n_kv, dtype=np.int32)
    q_pos = kv_pos[n_kv - n :]
    got = backend.attention(q, k, v, q_pos, kv_pos, n_swa, 0.125, cells)
    same = backend.attention(q, numpy_ops.kv_rows_f32(k), numpy_ops.kv_rows_f32(v), q_pos, kv_pos, n_swa, 0.125, cells)
    want = numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.125, cells)
    assert got.shape == (n, H * D) and np.array_equal(got, same)
    assert np.allclose(got, want, atol=2e-6, rtol=1e-5)
    if n > 1:  # a token alone: the same bits as in its batch (compiled backends)
        alone = backend.attention(q[-1:], k, v, q_pos[-1:], kv_pos, n_swa, 0.125, cells)
        if backend.name != "reference":
            assert np.array_equal(alone[0], got[-1])
