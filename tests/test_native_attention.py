"""Attention in C (native/attention.c, edgeinfer._native.attention) against the numpy oracle, on the
AVX2 and the portable code: accuracy, sliding windows, extreme scores, batch and thread-count invariance,
K/V in f32, f16 and q8_0."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.kernels import numpy_ops
from edgeinfer.kernels import native

pytestmark = pytest.mark.skipif(not native.available(), reason="edgeinfer._native is not built")

SHAPES = [  # n, n_kv, n_head, n_head_kv, head_dim, head_dim_v, n_swa (tests/test_ops.py::test_attention and more)
    (1, 1, 4, 1, 16, 16, 0),
    (1, 37, 9, 3, 64, 64, 0),
    (1, 300, 4, 1, 256, 256, 16),
    (5, 12, 6, 2, 8, 12, 0),
    (40, 40, 9, 3, 64, 64, 0),
    (33, 70, 4, 4, 32, 32, 9),
    (3, 29, 4, 2, 13, 20, 0),  # tails: D and Dv not multiples of 8, n_kv not of 4
    (2, 600, 9, 3, 64, 64, 0),
    (4, 200, 4, 1, 256, 256, 64),
]


@pytest.fixture(params=["auto", "scalar"])
def isa(request):
    mod = native._require()
    previous = mod.set_isa(request.param)
    yield request.param
    mod.set_isa(previous)


def _attn(q, k, v, q_pos, kv_pos, n_swa, scale, n_threads=2, cells=None):
    out = np.empty((q.shape[0], q.shape[1] * numpy_ops.kv_head_dim(v)), np.float32)
    cells = np.arange(len(kv_pos), dtype=np.int32) if cells is None else cells
    native._require().attention(q, k, v, q_pos, kv_pos, cells, n_swa, scale, out, n_threads)
    return out


def _arange(n):
    return np.arange(n, dtype=np.int32)


def _case(seed, n, n_kv, n_head, n_head_kv, head_dim, head_dim_v):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, n_head, head_dim)).astype(np.float32)
    k = rng.standard_normal((n_kv, n_head_kv, head_dim)).astype(np.float32)
    v = rng.standard_normal((n_kv, n_head_kv, head_dim_v)).astype(np.float32)
    kv_pos = np.arange(n_kv, dtype=np.int32)
    return q, k, v, kv_pos[n_kv - n :].copy(), kv_pos


@pytest.mark.parametrize("n,n_kv,n_head,n_head_kv,head_dim,head_dim_v,n_swa", SHAPES)
def test_attention_matches_oracle(isa, n, n_kv, n_head, n_head_kv, head_dim, head_dim_v, n_swa):
    q, k, v, q_pos, kv_pos = _case(n * 1000 + n_kv, n, n_kv, n_head, n_head_kv, head_dim, head_dim_v)
    scale = 1 / np.sqrt(head_dim)
    got = _attn(q, k, v, q_pos, kv_pos, n_swa, scale)
    want = numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, scale)
    assert np.allclose(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("n_swa", [1, 4, 8, 31, 100])
def test_sliding_window(isa, n_swa):
    q, k, v, q_pos, kv_pos = _case(3, 24, 80, 4, 2, 32, 32)
    got = _attn(q, k, v, q_pos, kv_pos, n_swa, 0.2)
    assert np.allclose(got, numpy_ops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.2), atol=2e-6, rtol=1e-5)


def test_cache_slice_and_unordered_cells(isa):
    """k and v as the first n_kv cells of a bigger cache; cells whose positions are not in order."""
    q, k, v, q_pos, _ = _case(4, 6, 50, 6, 3, 64, 64)
    cache_k = np.zeros((128, 3, 64), np.float32)
    cache_v = np.zeros((128, 3, 64), np.float32)
    cache_k[:50], cache_v[:50] = k, v
    kv_pos = np.random.default_rng(0).permutation(50).astype(np.int32)
    got = _attn(q, cache_k[:50], cache_v[:50], q_pos, kv_pos, 0, 0.125)
    assert np.allclose(got, numpy_ops.attention(q, k, v, q_pos, kv_pos, 0, 0.125), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("n_swa", [0, 8])
def test_paged_cells_give_the_same_bits(isa, n_swa):
    """A paged cache: the sequence's tokens scattered in blocks over a bigger pool, read through its
    cell table, give the same bits as the same K and V in token order; the numpy oracle agrees."""
    q, k, v, q_pos, kv_pos = _case(11, 5, 70, 9, 3, 64, 64)
    rng = np.random.default_rng(1)
    blocks = rng.permutation(16)[:3]  # 3 blocks of 32 out of a pool of 16
    cells = np.concatenate([np.arange(b * 32, b * 32 + 32) for b in blocks])[:70].astype(np.int32)
    pool_k = rng.standard_normal((16 * 32, 3, 64)).astype(np.float32)
    pool_v = rng.standard_normal((16 * 32, 3, 64)).astype(np.float32)
    pool_k[cells], pool_v[cells] = k, v
    want = _attn(q, k, v, q_pos, kv_pos, n_swa, 0.125)
    assert np.array_equal(_attn(q, pool_k, pool_v, q_pos, kv_pos, n_swa, 0.125, cells=cells), want)
    oracle = numpy_ops.attention(q, pool_k, pool_v, q_pos, kv_pos, n_swa, 0.125, cells)
    assert np.allclose(oracle, want, atol=2e-6, rtol=1e-5)
    backend = native.NativeBackend(n_threads=2)
    assert np.array_equal(backend.attention(q, pool_k, pool_v, q_pos, kv_pos, n_swa, 0.125, cells), want)
    got = backend.attention_many([(q, pool_k, pool_v, q_pos, kv_pos, cells), (q, k, v, q_pos, kv_pos, None)], n_swa, 0.125)
    assert np.array_equal(got[0], want) and np.array_equal(got[1], want)
    from edgeinfer.kernels.numba import ops as numba_ops

    numba_got = numba_ops.attention(q, pool_k, pool_v, q_pos, kv_pos, n_swa, 0.125, cells)
    assert np.array_equal(numba_got, numba_ops.attention(q, k, v, q_pos, kv_pos, n_swa, 0.125))


def test_cells_outside_the_storage_are_refused():
    q, k, v, q_pos, kv_pos = _case(12, 2, 10, 4, 2, 16, 16)
    out = np.empty((2, 64), np.float32)
    bad = _arange(10)
    bad[3] = 10
    with pytest.raises(ValueError, match="not a row"):
        native._require().attention(q, k, v, q_pos, kv_pos, bad, 0, 1.0, out, 2)
    with pytest.raises(ValueError, match="shapes"):
        native._require().attention(q, k, v, q_pos, kv_pos, bad[:5], 0, 1.0, out, 2)
    from edgeinfer.kernels.numba import ops as numba_ops

    with pytest.raises(ValueError):
        numba_ops.attention(q, k, v, q_pos, kv_pos, 0, 1.0, bad)


def test_extreme_scores(isa):
    """q and k x100: a softmax of one winner, no inf or nan."""
    q, k, v, q_pos, kv_pos = _case(6, 4, 40, 4, 2, 64, 64)
    q *= 100
    k *= 100
    got = _attn(q, k, v, q_pos, kv_pos, 0, 1.0)
    assert np.isfinite(got).all()
    assert np.allclose(got, numpy_ops.attention(q, k, v, q_pos, kv_pos, 0, 1.0), atol=1e-5)


@pytest.mark.parametrize("shape", [(20, 50, 4, 2, 32, 32), (12, 300, 9, 3, 64, 64), (6, 90, 4, 1, 256, 256)])
@pytest.mark.parametrize("n_swa", [0, 8])
def test_batch_invariance(isa, shape, n_swa):
    """A token's output is the same bits alone, in its batch, and against a cache that holds fewer cells
    (only the ones it sees: decode after prefill)."""
    n, n_kv = shape[:2]
    q, k, v, q_pos, kv_pos = _case(5, *shape)
    batch = _attn(q, k, v, q_pos, kv_pos, n_swa, 0.2)
    for t in (0, n // 2, n - 1):
        alone = _attn(q[t : t + 1], k, v, q_pos[t : t + 1], kv_pos, n_swa, 0.2)
        assert np.array_equal(alone[0], batch[t])
        m = int(q_pos[t]) + 1  # the cells up to its own
        short = _attn(q[t : t + 1], k[:m], v[:m], q_pos[t : t + 1], kv_pos[:m], n_swa, 0.2)
        assert np.array_equal(short[0], batch[t])


@pytest.mark.parametrize("shape", [(1, 300, 4, 1, 256, 256), (1, 500, 9, 3, 64, 64), (30, 100, 9, 3, 64, 64)])
def test_thread_count_invariance(isa, shape):
    q, k, v, q_pos, kv_pos = _case(8, *shape)
    one = _attn(q, k, v, q_pos, kv_pos, 0, 0.125, n_threads=1)
    for n_threads in (2, 3, 8):
        assert np.array_equal(_attn(q, k, v, q_pos, kv_pos, 0, 0.125, n_threads=n_threads), one)


def test_backend_uses_native_and_falls_back():
    b = native.NativeBackend(n_threads=2)
    q, k, v, q_pos, kv_pos = _case(9, 3, 20, 4, 2, 16, 16)
    want = numpy_ops.attention(q, k, v, q_pos, kv_pos, 0, 0.25)
    assert np.array_equal(b.attention(q, k, v, q_pos, kv_pos, 0, 0.25), _attn(q, k, v, q_pos, kv_pos, 0, 0.25))
    # float64, a strided view and int64 positions go to the Numba op
    got = b.attention(q.astype(np.float64), k[:, :, :], v, q_pos.astype(np.int64), kv_pos, 0, 0.25)
    assert np.allclose(got, want, atol=2e-6, rtol=1e-5)
    qs = np.concatenate([q, q], axis=2)[:, :, :16]
    assert not qs.flags.c_contiguous
    assert np.allclose(b.attention(qs, k, v, q_pos, kv_pos, 0, 0.25), want, atol=2e-6, rtol=1e-5)


def test_bad_arguments_raise():
    q, k, v, q_pos, kv_pos = _case(10, 2, 10, 4, 2, 16, 16)
    mod = native._require()
    out = np.empty((2, 64), np.float32)
    with pytest.raises(ValueError):
        mod.attention(q, k, v, q_pos.astype(np.int64), kv_pos, _arange(10), 0, 1.0, out, 2)
    with pytest.raises(ValueError):
        mod.attention(q, k, v, q_pos, kv_pos, _arange(10), 0, 1.0, np.empty((2, 63), np.float32), 2)
    with pytest.raises(ValueError):
        mod.attention(q[:, :3], k, v, q_pos, kv_pos, _arange(10), 0, 1.0, np.empty((2, 48), np.float32), 2)
    with pytest.raises((BufferError, ValueError)):  # numpy: ValueError for a non-contiguous view
        mod.attention(q[:, :, :8], k, v, q_pos, kv_pos, _arange(10), 0, 1.0, out, 2)


# -- several sequences in one call (continuous batching) ---------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_attention_many_equals_each_alone(isa, threads):
    """attention_many over sequences of different lengths and cache sizes gives each one the same bits
    as attention() alone (whatever the threads and the other sequences)."""
    cases = [_case(i, n, n_kv, 9, 3, 64, 64) for i, (n, n_kv) in enumerate([(1, 37), (1, 1), (5, 12), (1, 300), (40, 40)])]
    mod = native._require()
    outs = [np.empty((q.shape[0], q.shape[1] * v.shape[2]), np.float32) for q, _, v, _, _ in cases]
    qs, ks, vs, qps, kps = (list(x) for x in zip(*cases))
    mod.attention_many(qs, ks, vs, qps, kps, [_arange(len(kp)) for kp in kps], 0, 0.125, outs, threads)
    for (q, k, v, qp, kp), out in zip(cases, outs):
        assert np.array_equal(out, _attn(q, k, v, qp, kp, 0, 0.125, n_threads=2))
        want = numpy_ops.attention(q, k, v, qp, kp, 0, 0.125)
        assert np.abs(out - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))
    backend = native.NativeBackend(n_threads=threads)
    got = backend.attention_many([c + (None,) for c in cases], 0, 0.125)
    assert all(np.array_equal(a, b) for a, b in zip(got, outs))


def test_attention_many_rejects_bad_arguments():
    mod = native._require()
    q, k, v, qp, kp = _case(0, 1, 5, 4, 2, 8, 8)
    out = np.empty((1, 32), np.float32)
    c = [_arange(5)]
    with pytest.raises(TypeError, match="lists"):
        mod.attention_many(q, [k], [v], [qp], [kp], c, 0, 1.0, [out], 1)
    with pytest.raises(ValueError, match="differ in length"):
        mod.attention_many([q, q], [k], [v], [qp], [kp], c, 0, 1.0, [out], 1)
    with pytest.raises(ValueError, match="shapes do not fit"):
        mod.attention_many([q], [k], [v], [qp], [kp], c, 0, 1.0, [np.empty((1, 31), np.float32)], 1)
    with pytest.raises(ValueError, match="float32"):
        mod.attention_many([q.astype(np.float64)], [k], [v], [qp], [kp], c, 0, 1.0, [out], 1)
    mod.attention_many([], [], [], [], [], [], 0, 1.0, [], 1)  # nothing to do


# -- K/V stored in f16 or q8_0 (a row converted as it is read) --------------------------------------------


def _stored(kv_type, x):
    from edgeinfer.nn.kv import KV_TYPES

    t = KV_TYPES[kv_type]
    store = np.zeros((*x.shape[:-1], t.row_size(x.shape[-1])), t.dtype)
    numpy_ops.kv_store(store, slice(None), x)
    return store


KV_SHAPES = [  # n, n_kv, n_head, n_head_kv, head_dim, head_dim_v, n_swa
    (1, 37, 9, 3, 64, 64, 0),
    (1, 300, 4, 1, 256, 256, 16),
    (40, 40, 9, 3, 64, 64, 0),
    (5, 12, 6, 2, 32, 96, 0),  # Dv not a multiple of 64: the 16-value passes, then 8 at a time
    (3, 29, 4, 2, 13, 20, 0),  # f16 tails: D and Dv not multiples of 8
]


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
@pytest.mark.parametrize("n,n_kv,n_head,n_head_kv,head_dim,head_dim_v,n_swa", KV_SHAPES)
def test_f16_and_q8_0_give_the_bits_of_their_values(isa, kv_type, n, n_kv, n_head, n_head_kv, head_dim, head_dim_v, n_swa):
    """Rows converted as they are loaded (vcvtph2ps; int8 x d): the bits of the same call on the float32
    values they hold, through a paged cache's cells; the numpy oracle agrees; each token alone as in its
    batch; any thread count."""
    if kv_type == "q8_0" and (head_dim % 32 or head_dim_v % 32):
        pytest.skip("q8_0 rows are blocks of 32")
    q, k32, v32, q_pos, kv_pos = _case(n * 7 + n_kv, n, n_kv, n_head, n_head_kv, head_dim, head_dim_v)
    rng = np.random.default_rng(2)
    cells = rng.permutation(n_kv + 9)[:n_kv].astype(np.int32)
    pool_k = _stored(kv_type, rng.standard_normal((n_kv + 9, n_head_kv, head_dim)).astype(np.float32))
    pool_v = _stored(kv_type, rng.standard_normal((n_kv + 9, n_head_kv, head_dim_v)).astype(np.float32))
    pool_k[cells], pool_v[cells] = _stored(kv_type, k32), _stored(kv_type, v32)
    f32_k, f32_v = numpy_ops.kv_rows_f32(pool_k), numpy_ops.kv_rows_f32(pool_v)
    got = _attn(q, pool_k, pool_v, q_pos, kv_pos, n_swa, 0.2, cells=cells)
    assert np.array_equal(got, _attn(q, f32_k, f32_v, q_pos, kv_pos, n_swa, 0.2, cells=cells))
    want = numpy_ops.attention(q, pool_k, pool_v, q_pos, kv_pos, n_swa, 0.2, cells)
    assert np.allclose(got, want, atol=2e-6, rtol=1e-5)
    t = n - 1
    assert np.array_equal(_attn(q[t:], pool_k, pool_v, q_pos[t:], kv_pos, n_swa, 0.2, cells=cells)[0], got[t])
    for threads in (1, 3):
        assert np.array_equal(_attn(q, pool_k, pool_v, q_pos, kv_pos, n_swa, 0.2, threads, cells), got)
    backend = native.NativeBackend(n_threads=2)
    assert np.array_equal(backend.attention(q, pool_k, pool_v, q_pos, kv_pos, n_swa, 0.2, cells), got)
    many = backend.attention_many([(q, pool_k, pool_v, q_pos, kv_pos, cells), (q, k32, v32, q_pos, kv_pos, None)], n_swa, 0.2)
    assert np.array_equal(many[0], got)


def test_k_and_v_of_different_formats_are_refused():
    q, k, v, q_pos, kv_pos = _case(13, 2, 10, 4, 2, 32, 32)
    out = np.empty((2, 128), np.float32)
    with pytest.raises(ValueError, match="alike"):
        native._require().attention(q, k.astype(np.float16), v, q_pos, kv_pos, _arange(10), 0, 1.0, out, 2)
    with pytest.raises(ValueError):  # uint8 rows that are not whole Q8_0 blocks
        native._require().attention(q, np.zeros((10, 2, 33), np.uint8), np.zeros((10, 2, 33), np.uint8), q_pos,
                                    kv_pos, _arange(10), 0, 1.0, out, 2)  # fmt: skip
