"""The paged KV cache (edgeinfer/engine/kv_cache.py): block accounting, shared prefixes (copy on write),
rollback, a full pool, and models giving the same logits from a shared pool as from private caches, in
every storage format (f16, q8_0, f32), and the memory each takes."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from edgeinfer.arch import build_model
from edgeinfer.engine.kv_cache import BlockPool, KVCache, PoolFullError
from edgeinfer.errors import ContextFullError, EdgeInferError
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels import get_backend
from edgeinfer.kernels.numpy_ops import kv_rows_f32, kv_store
from edgeinfer.nn.kv import KV_TYPES
from reference_model import write_tiny_model

BS = 4  # a small block size, so that tests cross many block boundaries
D, DV = 32, 64  # head sizes (q8_0 stores blocks of 32 values)
KV = list(KV_TYPES)


@pytest.fixture(params=KV)
def kv(request):
    return request.param


def _pool(n_cells=64, block_size=BS, kv_type="f32"):
    return BlockPool(n_layer=2, n_cells=n_cells, n_head_kv=2, head_dim=D, head_dim_v=DV, kv_type=kv_type, block_size=block_size)


def _cache(pool, n_ctx=40):
    return KVCache(2, n_ctx, 2, D, None, DV, pool=pool)


def _rounded(x, kv_type):
    """float32 x (..., head_dim) as a cache in kv_type holds it: stored and read back by the numpy reference."""
    t = KV_TYPES[kv_type]
    store = np.zeros((*x.shape[:-1], t.row_size(x.shape[-1])), t.dtype)
    kv_store(store, slice(None), x)
    return kv_rows_f32(store)


def _fill(cache, tokens, seed):
    """Store distinct K/V for `tokens` more tokens through the protocol; returns what the cache holds of
    them (rounded to its kv_type)."""
    rng = np.random.default_rng(seed)
    n = tokens
    cache.begin(np.arange(cache.n_past, cache.n_past + n, dtype=np.int32))
    ks, vs = [], []
    for il in range(2):
        k = rng.standard_normal((n, 2, D)).astype(np.float32)
        v = rng.standard_normal((n, 2, DV)).astype(np.float32)
        cache.update(il, k, v)
        ks.append(_rounded(k, cache.kv_type.name)), vs.append(_rounded(v, cache.kv_type.name))
    cache.commit()
    return np.stack(ks), np.stack(vs)  # (layer, n, ...)


def _read(cache):
    end = cache.n_past
    cells = cache.cells[:end]
    return kv_rows_f32(cache.pool.k[:, cells]), kv_rows_f32(cache.pool.v[:, cells])


def test_blocks_follow_the_tokens(kv):
    pool = _pool(kv_type=kv)
    c = _cache(pool)
    assert pool.n_used == 0 and c.nbytes == 0
    k1, v1 = _fill(c, 5, 0)
    assert len(c.blocks) == 2 and pool.n_used == 2  # 5 tokens in blocks of 4
    k2, v2 = _fill(c, 3, 1)
    assert len(c.blocks) == 2 and c.n_past == 8
    k3, _ = _fill(c, 1, 2)
    assert len(c.blocks) == 3 and c.nbytes == 3 * pool.block_nbytes
    k, v = _read(c)
    assert np.array_equal(k, np.concatenate([k1, k2, k3], axis=1))
    c.truncate(4)
    assert len(c.blocks) == 1 and pool.n_used == 1
    c.release()
    assert pool.n_used == 0 and pool.n_free == pool.n_blocks


def test_blocks_are_handed_out_lowest_first():
    pool = _pool()
    a, b = _cache(pool), _cache(pool)
    _fill(a, 8, 0), _fill(b, 4, 1)
    assert a.blocks == [0, 1] and b.blocks == [2]
    a.release()
    _fill(b, 8, 2)
    assert b.blocks == [2, 0, 1]  # the freed low blocks again: the pages in use stay together
    assert list(b.cells[:12]) == [8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 6, 7]


def test_shared_prefix_is_not_copied_and_copy_on_write_keeps_both(kv):
    pool = _pool(kv_type=kv)
    a = _cache(pool)
    k, v = _fill(a, 10, 0)  # blocks: 4 + 4 + 2
    b = _cache(pool)
    b.copy_prefix(a, 9)  # two full blocks shared, one token copied
    assert b.blocks[:2] == a.blocks[:2] and b.blocks[2] != a.blocks[2]
    assert pool.refs[a.blocks[0]] == 2 and pool.n_used == 4
    kb, vb = _read(b)
    assert np.array_equal(kb, k[:, :9]) and np.array_equal(vb, v[:, :9])
    # b goes on, a goes on: neither sees the other's new tokens
    kb2, _ = _fill(b, 3, 1)
    ka2, _ = _fill(a, 2, 2)
    assert np.array_equal(_read(a)[0], np.concatenate([k, ka2], axis=1))
    assert np.array_equal(_read(b)[0], np.concatenate([k[:, :9], kb2], axis=1))
    # a rolls back into a shared block: it gets its own copy first, b's tokens stay as they were
    a.truncate(6)
    assert a.blocks[1] != b.blocks[1] and pool.refs[b.blocks[1]] == 1
    ka3, _ = _fill(a, 3, 3)
    assert np.array_equal(_read(a)[0], np.concatenate([k[:, :6], ka3], axis=1))
    assert np.array_equal(_read(b)[0], np.concatenate([k[:, :9], kb2], axis=1))
    a.release(), b.release()
    assert pool.n_used == 0 and not pool.refs.any()


@pytest.mark.parametrize("src_kv", KV)
def test_prefix_from_another_pool_is_copied(src_kv, kv):
    """Copied as it is between pools of one format, converted (rounded once more) between formats."""
    a = _cache(_pool(kv_type=src_kv))
    k, v = _fill(a, 7, 0)
    b = _cache(_pool(kv_type=kv))
    b.copy_prefix(a, 6)
    kb, vb = _read(b)
    assert np.array_equal(kb, _rounded(k[:, :6], kv)) and np.array_equal(vb, _rounded(v[:, :6], kv))


def test_memory_follows_the_format():
    """Bytes per block: f16 half of f32, q8_0 34/128 of it (ggml's block_q8_0); the arrays are that big."""
    pools = {t: _pool(n_cells=4096, block_size=32, kv_type=t) for t in KV}
    f32 = pools["f32"].block_nbytes
    assert f32 == 2 * 2 * (D + DV) * 4 * 32  # layers x KV heads x (K + V values) x 4 bytes x cells
    assert pools["f16"].block_nbytes * 2 == f32
    assert pools["q8_0"].block_nbytes * 128 == f32 * 34
    for p in pools.values():
        assert p.nbytes == p.k.nbytes + p.v.nbytes == p.n_blocks * p.block_nbytes
    assert pools["f16"].k.dtype == np.float16 and pools["q8_0"].k.shape[-1] == D // 32 * 34


def test_bad_kv_type_is_a_clear_error():
    with pytest.raises(EdgeInferError, match="'f16', 'q8_0', 'f32'"):
        _pool(kv_type="q4_0")
    with pytest.raises(EdgeInferError, match="blocks of 32"):
        BlockPool(2, 64, 2, head_dim=48, kv_type="q8_0")
    with pytest.raises(ValueError, match="differs from its pool"):
        KVCache(2, 40, 2, D, "f32", DV, pool=_pool(kv_type="f16"))


def test_full_pool_raises_and_changes_nothing():
    pool = _pool(n_cells=12)  # 3 blocks
    a, b = _cache(pool), _cache(pool)
    _fill(a, 8, 0)
    with pytest.raises(PoolFullError, match="pool is full"):
        _fill(b, 5, 1)  # needs 2 blocks, 1 is free
    assert b.n_past == 0 and not b.blocks and pool.n_used == 2
    assert isinstance(PoolFullError("x"), ContextFullError)
    # a reclaim hook that frees a block lets the allocation go through
    pool.reclaim = lambda: (a.truncate(4), True)[1] if len(a.blocks) > 1 else False
    _fill(b, 5, 2)
    assert b.n_past == 5 and a.n_past == 4 and pool.n_used == 3


def test_context_limit_is_per_sequence():
    pool = _pool()
    c = _cache(pool, n_ctx=6)
    _fill(c, 6, 0)
    with pytest.raises(ContextFullError, match="context is full"):
        _fill(c, 1, 1)
    assert c.n_past == 6


def test_dropped_cache_gives_its_blocks_back():
    pool = _pool()
    c = _cache(pool)
    _fill(c, 9, 0)
    assert pool.n_used == 3
    del c
    assert pool.n_used == 0


@pytest.mark.parametrize("backend_name", ["numba", "native", "reference"])
def test_model_in_a_shared_pool_equals_private_caches(tmp_path, backend_name, kv):
    """Three sequences interleaved in one small-block pool, with a shared prefix and a rollback, give
    the logits each gets alone in its own cache (bit for bit on the compiled backends), in every format."""
    path = tmp_path / "m.gguf"
    write_tiny_model(path, "llama", T.Q8_0, seed=3, n_embd=128)  # heads of 32
    if kv != "f32" and backend_name == "reference":  # numpy's BLAS sums a row alone and in a batch apart:
        pytest.skip("K and V differ in the last bits, and rounded to f16 or q8_0 by a step of the format")
    try:
        backend = get_backend(backend_name, n_threads=2)
    except Exception as e:  # the native extension may be missing on this machine
        pytest.skip(str(e))
    model = build_model(GGUFFile(path), backend)
    model.set_kv_type(kv)
    n_vocab = 256  # write_tiny_model's default
    rng = np.random.default_rng(0)
    common = rng.integers(0, min(n_vocab, 200), 11).astype(np.int32)
    seqs = [np.concatenate([common, rng.integers(0, min(n_vocab, 200), 6).astype(np.int32)]) for _ in range(3)]
    alone = [model.forward(s, KVCache.for_model(model, 32)) for s in seqs]

    pool = BlockPool.for_model(model, 96, block_size=BS)
    caches = [KVCache.for_model(model, 32, pool=pool) for _ in seqs]
    got = [[] for _ in seqs]
    got[0].append(model.forward(seqs[0][:5], caches[0]))
    caches[1].copy_prefix(caches[0], 5)  # one full block shared, one token copied
    got[1].append(alone[1][:5])
    got[0].append(model.forward(seqs[0][5:9], caches[0]))
    caches[2].copy_prefix(caches[0], 9)
    got[2].append(alone[2][:9])
    outs = model.forward_many([seqs[1][5:8], seqs[0][9:], seqs[2][9:12]], [caches[1], caches[0], caches[2]], all_logits=True)
    got[1].append(outs[0]), got[0].append(outs[1]), got[2].append(outs[2])
    caches[1].truncate(6)  # roll back into a block it shares with nobody, then go on token by token
    got[1] = [np.concatenate(got[1])[:6]]
    for t in range(6, len(seqs[1])):
        got[1].append(model.forward(seqs[1][t : t + 1], caches[1]))
    got[2].append(model.forward(seqs[2][12:], caches[2]))
    for g, want in zip(got, alone):
        g = np.concatenate(g)
        if backend_name == "reference":
            np.testing.assert_allclose(g, want, atol=1e-4, rtol=1e-5)
        else:
            assert np.array_equal(g, want)
    assert pool.n_used > 0
    for c in caches:
        c.release()
    assert pool.n_used == 0
