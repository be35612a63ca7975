"""The native (C) backend: every C kernel against the emulation of ggml's algorithm (tests/test_matmul.py),
on both instruction sets (the best one here, and the portable scalar code), odd shapes, batch and thread
invariance, real tensors, bad inputs, and the whole real models against llama.cpp's logits.

The extension must be built wherever a C compiler exists (test_extension_is_built): CI cannot skip
everything silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T
from test_matmul import (
    assert_close_to_float,
    assert_matches_emulation,
    cols_for,
    emulate,
    random_weight,
    random_x,
    real_slices,
)

from edgeinfer.errors import EdgeInferError, UnsupportedTypeError
from edgeinfer.gguf import GGUFFile
from edgeinfer.kernels import BACKENDS, get_backend
from edgeinfer.kernels import native
from edgeinfer.kernels.base import QTensor
from edgeinfer.kernels.numba import matmul as nm

HAVE_COMPILER = bool(shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
needs_native = pytest.mark.skipif(not native.available(), reason="edgeinfer._native is not built")

C_TYPES = list(native.NATIVE_TYPES)
FALLBACK_TYPES = [T.BF16, T.Q2_K, T.Q3_K]  # IQ4_XS runs repacked (tests/test_x8.py)


def test_extension_is_built():
    """Wherever a C compiler exists the install builds the extension: a missing build is a failure."""
    if not HAVE_COMPILER:
        pytest.skip("no C compiler here: the native backend is optional")
    assert native.available(), (
        "edgeinfer._native is not built although a C compiler exists; run `pip install -e .` "
        f"({native._IMPORT_ERROR})"
    )
    assert native.native_isa() in native.isas() and native.native_isa() in native.ISA_PATHS


def _isas() -> list[str]:
    if not native.available():
        return ["auto"]
    from edgeinfer import _native

    return list(_native.isas())  # every set this CPU runs (on a Zen 4: avx512vnni, avx2 and scalar)


@pytest.fixture(params=_isas())
def isa(request):
    """Run the test on one instruction set (set in-process), then restore the one chosen at import."""
    if not native.available():
        pytest.skip("edgeinfer._native is not built")
    from edgeinfer import _native

    before = _native.set_isa(request.param)
    try:
        yield request.param
    finally:
        _native.set_isa(before)


def backend(n_threads: int = 2) -> native.NativeBackend:
    return native.NativeBackend(n_threads)


# -- every C format against the emulation ----------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [1, 3, 4, 5, 8, 16, 17])
@pytest.mark.parametrize("ggml_type", C_TYPES, ids=lambda t: t.name)
def test_matmul_random(isa, ggml_type, n_tokens):
    n_cols = cols_for(ggml_type)
    w = random_weight(ggml_type, 37, n_cols, seed=n_tokens)
    x = random_x(n_tokens, n_cols, seed=n_tokens)
    y = backend().matmul(w, x)
    assert y.dtype == np.float32 and y.shape == (n_tokens, 37)
    assert_matches_emulation(w, x, y)
    assert_close_to_float(w, x, y)


@pytest.mark.parametrize("ggml_type", C_TYPES, ids=lambda t: t.name)
def test_matches_numba_backend(ggml_type):
    """Within 1e-5 of the products' magnitude of the Numba backend (only float summation order differs)."""
    w = random_weight(ggml_type, 45, cols_for(ggml_type), seed=3)
    x = random_x(6, w.n_cols, seed=4)
    _, magnitude = emulate(w, x)
    diff = np.abs(backend().matmul(w, x).astype(np.float64) - nm.matmul(w, x))
    assert (diff <= 1e-5 * magnitude + 1e-30).all()


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q4_0, T.Q6_K, T.Q4_K, T.Q5_K], ids=lambda t: t.name)
def test_random_blocks_extremes(isa, ggml_type):
    """Random bytes in every block (Q8_0 quants of -128 too) against the emulation."""
    from edgeinfer import quant

    fmt = quant.get_format(ggml_type)
    rng = np.random.default_rng(5)
    n_rows, n_cols = 16, 512
    raw = rng.integers(0, 256, (n_rows, n_cols // fmt.block_size * fmt.type_size), dtype=np.uint8)
    blocks = raw.reshape(-1).view(fmt.block_dtype)
    blocks["d"] = (rng.standard_normal(len(blocks)) * 0.05).astype(np.float16)
    w = QTensor("random blocks", ggml_type, (n_cols, n_rows), raw)
    x = random_x(5, n_cols, seed=7)
    assert_matches_emulation(w, x, backend().matmul(w, x))


@pytest.mark.parametrize("n_rows", [1, 3, 5, 63, 301])
@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q6_K, T.F32], ids=lambda t: t.name)
def test_odd_shapes(isa, ggml_type, n_rows):
    """Row counts that are no multiple of the tile, the chunk or the thread count; F32 rows of odd length."""
    n_cols = 77 if ggml_type == T.F32 else cols_for(ggml_type)
    w = random_weight(ggml_type, n_rows, n_cols, seed=n_rows)
    for n_tokens in (1, 4, 5, 8, 9, 16, 17):
        x = random_x(n_tokens, n_cols, seed=n_tokens)
        assert_matches_emulation(w, x, backend().matmul(w, x))


# -- invariance: batch, threads ------------------------------------------------------------------------


@pytest.mark.parametrize("ggml_type", C_TYPES, ids=lambda t: t.name)
def test_batch_and_thread_invariance(isa, ggml_type):
    """A token's output row is bit-identical alone (a decode step), in a tile of 4 or in the tail of a
    prefill, and on 1 or 2 threads."""
    w = random_weight(ggml_type, 67, cols_for(ggml_type))
    x = random_x(11, w.n_cols)
    two, one = backend(2), backend(1)
    batch = two.matmul(w, x)
    alone = np.concatenate([two.matmul(w, x[i : i + 1]) for i in range(len(x))])
    assert np.array_equal(batch, alone)
    assert np.array_equal(one.matmul(w, x), batch)
    assert np.array_equal(backend(3).matmul(w, x[3:8]), batch[3:8])


def test_q4_1_batch_tile_long_rows(isa):
    """Q4_1 against several tokens takes eight rows at a time, rows in lanes, the blocks transposed 32 at
    a time: rows long enough for several such chunks (and a partial one), a partial group of rows, and
    token counts around its tiles of 16 give each output the bits of a decode of that token alone, and
    the emulation's values."""
    w = random_weight(T.Q4_1, 21, 32 * 70, seed=3)
    x = random_x(18, w.n_cols, seed=4)
    alone = np.concatenate([backend(2).matmul(w, x[i : i + 1]) for i in range(len(x))])
    assert_matches_emulation(w, x, alone)
    for n in (2, 5, 8, 16, 17, 18):
        for threads in (1, 2, 3):
            assert np.array_equal(backend(threads).matmul(w, x[:n]), alone[:n]), (n, threads)


@needs_native
@pytest.mark.parametrize("ggml_type", C_TYPES, ids=lambda t: t.name)
def test_prefetch_distance_and_threads_do_not_change_results(ggml_type):
    """A decode's software prefetch (any distance, or none) and the per-thread row ranges (rows split
    unevenly, stolen at the end) leave every output bit as it is."""
    from edgeinfer import _native

    w = random_weight(ggml_type, 301, cols_for(ggml_type))
    x = random_x(3, w.n_cols)
    expected = backend(1).matmul(w, x)
    before = _native.set_prefetch(0)
    try:
        for distance in (0, 64, 2048, 100000):
            _native.set_prefetch(distance)
            for n in (1, 2, 3, 5):
                for t in range(len(x)):
                    assert np.array_equal(backend(n).matmul(w, x[t : t + 1])[0], expected[t])
    finally:
        _native.set_prefetch(before)
    with pytest.raises(ValueError):
        _native.set_prefetch(-1)


def test_many_threads_and_back():
    """More threads than cores, then fewer: the pool copes with any count."""
    w = random_weight(T.Q4_0, 200, 256)
    x = random_x(9, 256)
    expected = backend(1).matmul(w, x)
    for n in (4, 2, 7, 1, 2):
        assert np.array_equal(backend(n).matmul(w, x), expected)


# -- the portable code in a fresh process, and the fallback types -----------------------------------------

_SCALAR_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from test_matmul import assert_matches_emulation, cols_for, random_weight, random_x
from edgeinfer.kernels import native
assert native.native_isa() == "scalar", native.native_isa()
b = native.NativeBackend(2)
for ty in native.NATIVE_TYPES:
    w = random_weight(ty, 9, cols_for(ty))
    for n_tokens in (1, 5):
        x = random_x(n_tokens, w.n_cols)
        assert_matches_emulation(w, x, b.matmul(w, x))
print("scalar ok")
"""


@needs_native
def test_env_forces_scalar_isa():
    env = dict(os.environ, EDGEINFER_NATIVE_ISA="scalar")
    script = _SCALAR_SCRIPT.format(tests=os.path.dirname(__file__))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "scalar ok" in done.stdout, done.stderr[-3000:]


@needs_native
@pytest.mark.parametrize("ggml_type", FALLBACK_TYPES, ids=lambda t: t.name)
def test_types_without_c_kernel_use_numba(ggml_type):
    w = random_weight(ggml_type, 13, cols_for(ggml_type))
    x = random_x(3, w.n_cols)
    assert np.array_equal(backend().matmul(w, x), nm.matmul(w, x))


# -- real tensors ----------------------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize(
    "path_fixture, types",
    [("smollm2_path", {T.Q4_1, T.Q8_0}), ("gemma3_path", {T.Q5_0, T.Q4_K, T.Q6_K, T.Q8_0})],
)
def test_real_tensors(path_fixture, types, request):
    b = backend()
    for w in real_slices(request.getfixturevalue(path_fixture), types):
        for n_tokens in (1, 6):
            x = random_x(n_tokens, w.n_cols, seed=n_tokens)
            y = b.matmul(w, x)
            assert_matches_emulation(w, x, y)
            assert_close_to_float(w, x, y)


@needs_native
@pytest.mark.parametrize("path_fixture, name", [("smollm2_path", "blk.3.ffn_up.weight"), ("gemma3_path", "blk.2.ffn_down.weight")])
def test_real_full_matrix(path_fixture, name, request):
    """A whole real matrix, zero-copy from the mmap, in a decode and a prefill step."""
    w = QTensor.from_tensor_info(GGUFFile(request.getfixturevalue(path_fixture)).tensors[name])
    assert w.raw.flags.writeable is False
    x = random_x(13, w.n_cols)
    b = backend()
    y = b.matmul(w, x)
    assert_matches_emulation(w, x, y)
    assert np.array_equal(b.matmul(w, x[:1]), y[:1])


# -- input handling, the backend -------------------------------------------------------------------------


@needs_native
def test_bad_inputs_are_clear_errors():
    b = backend()
    w = random_weight(T.Q4_0, 8, 64)
    x = random_x(2, 64)
    with pytest.raises(ValueError, match=r"x has shape \(2, 32\), expected \(n_tokens, 64\)"):
        b.matmul(w, x[:, :32])
    with pytest.raises(ValueError, match="expected"):
        b.matmul(w, x[0])
    with pytest.raises(TypeError, match="floats"):
        b.matmul(w, np.ones((2, 64), np.int64))
    with pytest.raises(ValueError, match="out must be"):
        b.matmul(w, x, out=np.empty((2, 8), np.float64))
    with pytest.raises(ValueError, match="out must be"):
        b.matmul(w, x, out=np.empty((8, 2), np.float32))
    readonly = np.empty((2, 8), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out must be"):
        b.matmul(w, x, out=readonly)
    with pytest.raises(ValueError, match="2-D weight"):
        b.matmul(QTensor("experts", T.Q4_0, (64, 4, 2), np.zeros((2, 4, 36), np.uint8)), x)
    with pytest.raises(ValueError, match=r"needs raw uint8 of shape \(8, 36\)"):
        b.matmul(QTensor("bad", T.Q4_0, (64, 8), np.zeros((8, 40), np.uint8)), x)
    with pytest.raises(UnsupportedTypeError, match="NVFP4"):
        b.matmul(QTensor("nvfp4", T.NVFP4, (256, 1), np.zeros((1, 144), np.uint8)), random_x(1, 256))
    from edgeinfer import _native

    with pytest.raises(ValueError, match="do not fit"):  # the C side checks the byte sizes too
        _native.matmul(int(T.Q4_0), np.zeros(10, np.uint8), x, np.empty((2, 8), np.float32), 8, 64, 1)
    with pytest.raises(NotImplementedError):
        _native.matmul(int(T.Q2_K), np.zeros(84, np.uint8), random_x(1, 256), np.empty((1, 1), np.float32), 1, 256, 1)
    # the C side checks dtype, rank and shapes exactly (the backend's fast path relies on it): a float64 x of the
    # same byte size, a flat x, an out of the wrong shape or dtype are refused
    q4 = random_weight(T.Q4_0, 8, 64)
    flat = q4.raw.reshape(-1)
    for bad_x, bad_out in [
        (np.zeros((1, 32), np.float64), np.empty((1, 8), np.float32)),
        (np.zeros(64, np.float32), np.empty((1, 8), np.float32)),
        (np.zeros((1, 64), np.float32), np.empty((1, 2), np.float64)),
        (np.zeros((1, 64), np.float32), np.empty((2, 4), np.float32)),
        (np.zeros((1, 64), np.float32), np.empty(8, np.float32)),
        (np.zeros((1, 64), np.float32).astype(">f4"), np.empty((1, 8), np.float32)),
    ]:
        with pytest.raises(ValueError, match="float32"):
            _native.matmul(int(T.Q4_0), flat, bad_x, bad_out, 8, 64, 1)
    with pytest.raises(ValueError, match="n_threads"):
        native.NativeBackend(0)


@needs_native
def test_inputs_are_converted():
    b = backend()
    w = random_weight(T.Q8_0, 8, 64)
    x = random_x(4, 64)
    expected = b.matmul(w, x)
    assert np.array_equal(b.matmul(w, x.astype(np.float64)), expected)
    assert np.array_equal(b.matmul(w, np.asfortranarray(x)), expected)
    out = np.full((4, 8), np.nan, np.float32)
    assert b.matmul(w, x, out=out) is out and np.array_equal(out, expected)
    for ty in (T.Q8_0, T.F32):  # out may be x itself (F32: x is copied before any output is written)
        square = random_weight(ty, 64, 64)
        y = x.copy()
        assert b.matmul(square, y, out=y) is y
        assert np.array_equal(y, b.matmul(square, x))
    big = random_weight(T.Q8_0, 16, 64)
    sliced = QTensor("every other row", T.Q8_0, (64, 8), big.raw[::2])
    assert np.array_equal(b.matmul(sliced, x), b.matmul(big, x)[:, ::2])
    assert b.matmul(w, np.zeros((0, 64), np.float32)).shape == (0, 8)
    assert b.matmul(QTensor("no rows", T.Q8_0, (64, 0), np.zeros((0, 68), np.uint8)), x).shape == (4, 0)


def test_get_backend():
    assert BACKENDS == ("auto", "native", "numba", "reference")
    auto = get_backend("auto", n_threads=1)
    if native.available():
        assert auto.name == "native" and isinstance(auto, native.NativeBackend)
        b = get_backend("native", n_threads=1)
        assert b.name == "native" and b.n_threads == 1 and "NativeBackend(n_threads=1" in repr(b)
        w = random_weight(T.Q4_K, 8, 256)
        assert np.array_equal(b.dequantize(w), nm.dequantize(w))  # inherited from NumbaBackend
    else:
        assert auto.name == "numba"
        with pytest.raises(EdgeInferError, match="pip install"):
            get_backend("native")


# -- whole real models against llama.cpp -----------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


@needs_native
@pytest.mark.parametrize("kv", ["f16", "q8_0", "f32"])
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_real_model_matches_llama_cpp(name, request, kv):
    """The real model on the native backend agrees with llama.cpp as the Numba backend does, with K/V
    in every format."""
    from reference_model import agreement

    from edgeinfer.arch import build_model
    from edgeinfer.engine.kv_cache import KVCache

    path = request.getfixturevalue(f"{name}_path")
    fixture = np.load(FIXTURES / f"logits_{name}.npz")
    own = json.loads((FIXTURES / "logits_llamacpp.json").read_text())["models"][name]
    model = build_model(GGUFFile(path), native.NativeBackend())
    model.set_kv_type(kv)
    logits = model.forward(fixture["ids"], KVCache.for_model(model, 512))
    a = agreement(logits, fixture)
    print(name, "native", kv, a, "llama.cpp batch vs sequential:", own["batch_vs_seq_top1_mean_abs"])
    assert a["argmax"] >= 0.98, a
    assert a["top1_mean"] <= max(0.2, 1.5 * own["batch_vs_seq_top1_mean_abs"]), a
    assert a["top1_max"] <= 2.0, a
