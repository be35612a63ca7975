"""The Numba backend's row-interleaved ("x8") kernels (edgeinfer/kernels/numba/x8.py): prepare() repacks
Q4_0, Q5_0, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K and IQ4_XS weights into native/x8.h's layout (the same bytes
as the C repack), the products are ggml's (the numpy emulation and dequantize(W) @ x, within the tolerances of
test_matmul.py), the same bits as the native x8 kernels where those are built, and a token's output
does not depend on its batch or the thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from test_matmul import assert_close_to_float, assert_matches_emulation, random_weight, random_x

from edgeinfer.kernels import native
from edgeinfer.kernels.base import QTensor
from edgeinfer.kernels.numba import NumbaBackend
from edgeinfer.kernels.numba import matmul as nm
from edgeinfer.kernels.numba import x8

X8_TYPES = list(nm.X8_KERNELS)


def _cols(t: T) -> int:
    return 768 if t in (T.Q4_0, T.Q8_0) else 1024


def test_the_table_says_which_types_run_repacked():
    assert set(X8_TYPES) == {T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS}
    assert set(nm.X8_KERNELS) <= set(x8.FIELDS) and set(nm.X8_KERNELS) <= set(nm.MATMUL_KERNELS)
    assert set(nm.MATMUL_KERNELS) == set(nm.FORMATS) == set(nm.VEC_DOT_TYPE)
    if native.available():
        assert set(x8.FIELDS) == set(native.X8_TYPES)


@pytest.mark.parametrize("n_rows", [1, 7, 8, 37])
@pytest.mark.parametrize("ggml_type", list(x8.FIELDS), ids=lambda t: t.name)
def test_repack_round_trip_and_native_bytes(ggml_type, n_rows):
    w = random_weight(ggml_type, n_rows, _cols(ggml_type), seed=n_rows)
    _, type_size = nm.GGML_QUANT_SIZES[ggml_type]
    packed = x8.pack(ggml_type, w.raw, type_size)
    assert packed.shape == ((n_rows + 7) // 8 * 8, w.raw.shape[1]) and not packed.flags.writeable
    assert np.array_equal(x8.unpack(ggml_type, packed, n_rows, type_size), w.raw)
    if native.available():
        assert np.array_equal(packed, native.repack_x8(w).raw)


@pytest.mark.parametrize("n_tokens", [1, 2, 3, 4, 5, 9, 17])
@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_x8_matches_emulation_and_native(ggml_type, n_tokens):
    w = random_weight(ggml_type, 37, _cols(ggml_type), seed=n_tokens)
    x = random_x(n_tokens, w.n_cols, seed=n_tokens + 1)
    p = NumbaBackend(2).prepare(w)
    assert p.layout == "x8"
    y = NumbaBackend(2).matmul(p, x)
    assert_matches_emulation(w, x, y)
    assert_close_to_float(w, x, y)
    if native.available():
        assert np.array_equal(y, native.NativeBackend(2).matmul(native.repack_x8(w), x))


@pytest.mark.parametrize("ggml_type", X8_TYPES, ids=lambda t: t.name)
def test_x8_batch_and_thread_invariance(ggml_type):
    """Alone (a decode), in tiles of 4, in tails, in token blocks of a long prefill (n_cols 4096: 32-token
    blocks), on 1, 2 or 3 threads: the same bits."""
    w = NumbaBackend(1).prepare(random_weight(ggml_type, 67, 4096, seed=7))
    x = random_x(70, w.n_cols, seed=8)
    alone = np.concatenate([NumbaBackend(2).matmul(w, x[i : i + 1]) for i in range(len(x))])
    for threads in (1, 2, 3):
        b = NumbaBackend(threads)
        assert np.array_equal(b.matmul(w, x), alone), threads
        assert np.array_equal(b.matmul(w, x[3:8]), alone[3:8]), threads


def test_x8_weights_for_lookups_and_types_without_a_numba_kernel(monkeypatch):
    """get_rows / dequantize of a repacked weight give the file's values; a weight the native backend
    repacked in a type without a Numba x8 kernel (Q5_K, its kernel taken out of the table here) runs
    (unpacked once) with the same values."""
    b = NumbaBackend(1)
    w = random_weight(T.Q6_K, 13, 512, seed=2)
    p = b.prepare(w)
    assert np.array_equal(b.dequantize(p), b.dequantize(w))
    ids = np.array([0, 12, 5])
    assert np.array_equal(b.get_rows(p, ids), b.get_rows(w, ids))
    q5 = random_weight(T.Q5_K, 13, 512, seed=3)
    monkeypatch.delitem(nm.X8_KERNELS, T.Q5_K)
    assert b.prepare(q5) is q5
    _, type_size = nm.GGML_QUANT_SIZES[T.Q5_K]
    q5x8 = QTensor(q5.name, q5.ggml_type, q5.ne, x8.pack(T.Q5_K, q5.raw, type_size), layout="x8")
    x = random_x(3, 512)
    assert np.array_equal(b.matmul(q5x8, x), b.matmul(q5, x))
    with pytest.raises(ValueError, match="x8"):
        bad = QTensor(q5.name, T.Q4_1, (32 * 20, 8), np.zeros((8, 400), np.uint8), layout="x8")
        b.matmul(bad, random_x(1, 640))


def test_repack_can_be_turned_off():
    env = dict(os.environ, EDGEINFER_REPACK="0")
    code = (
        "from edgeinfer.kernels.numba import NumbaBackend; from test_matmul import random_weight; "
        "from gguf.constants import GGMLQuantizationType as T; "
        "w = random_weight(T.Q4_0, 8, 64); assert NumbaBackend(1).prepare(w) is w"
    )
    here = os.path.dirname(__file__)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=here)
