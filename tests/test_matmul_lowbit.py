"""The low-bit formats on the Numba backend (kernels/numba/lowbit.py) and the native one (native/lowbit.h;
tests/test_native_lowbit.py tests its kernels on every ISA):

- matmul against a float64 emulation of ggml's vec_dot: activations quantized by the numpy Q8_K / Q8_0
  references, dot products with the numpy-dequantized weights; ggml's integer algorithm is the same sum
  exactly, so only float rounding separates them (1e-5 of the products' magnitude);
- get_rows and dequantize bit for bit against the numpy references;
- a 4-token batch gives each token the bits it gets alone; several threads the bits of one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from test_matmul import quantize_q8_0, quantize_q8_k
from test_quant_lowbit import LOWBIT_TYPES, random_blocks

from edgeinfer import quant
from edgeinfer.kernels import get_backend
from edgeinfer.kernels.base import QTensor
from edgeinfer.kernels.numba import dequant as nd
from edgeinfer.kernels.numba import matmul as nm

REL = 1e-5


def weight(ggml_type: T, n_rows: int, n_cols: int, seed: int = 0) -> QTensor:
    block_size, _ = GGML_QUANT_SIZES[ggml_type]
    raw = random_blocks(ggml_type, n_rows * n_cols // block_size, seed=seed).reshape(n_rows, -1)
    return QTensor(f"w_{ggml_type.name}", ggml_type, (n_cols, n_rows), raw)


def emulate(w: QTensor, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the product as ggml computes it, in float64; the magnitude sum |w| |q| d per output)."""
    wf = quant.dequantize(w.raw, w.ggml_type, (w.n_rows, w.n_cols)).astype(np.float64)
    if nm.VEC_DOT_TYPE[w.ggml_type] == T.Q8_0:
        q, d = quantize_q8_0(x)
        size = 32
    else:
        q, d, _ = quantize_q8_k(x)
        size = 256
    xq = (q.astype(np.float64) * d[:, :, None]).reshape(x.shape[0], -1)  # (n_tokens, n_cols)
    del size
    return xq @ wf.T, np.abs(xq) @ np.abs(wf).T


@pytest.mark.parametrize("n_tokens", [1, 5])
@pytest.mark.parametrize("ggml_type", LOWBIT_TYPES, ids=lambda t: t.name)
def test_matmul_matches_emulation(ggml_type, n_tokens):
    w = weight(ggml_type, 24, 512, seed=int(ggml_type))
    x = np.random.default_rng(int(ggml_type)).standard_normal((n_tokens, 512)).astype(np.float32)
    y = nm.matmul(w, x)
    expected, magnitude = emulate(w, x)
    err = np.abs(y - expected) / magnitude
    assert err.max() < REL, f"worst {err.max():.2e}"
    # a token's bits do not depend on its batch
    for t in range(n_tokens):
        np.testing.assert_array_equal(nm.matmul(w, x[t : t + 1])[0], y[t])


@pytest.mark.parametrize("ggml_type", LOWBIT_TYPES, ids=lambda t: t.name)
def test_get_rows_and_dequantize_are_the_reference(ggml_type):
    w = weight(ggml_type, 9, 512, seed=7)
    wf = quant.dequantize(w.raw, ggml_type, (9, 512))
    ids = np.array([8, 0, 3, 3])
    np.testing.assert_array_equal(nm.get_rows(w, ids).view(np.uint32), wf[ids].view(np.uint32))
    np.testing.assert_array_equal(nm.dequantize(w).view(np.uint32), wf.view(np.uint32))
    np.testing.assert_array_equal(nd.dequantize_rows(w.raw, ggml_type, 2, 5).view(np.uint32), wf[2:5].view(np.uint32))


@pytest.mark.parametrize("backend", ["numba", "native"])
def test_backends_run_every_lowbit_type(backend):
    try:
        b = get_backend(backend, n_threads=2)
    except Exception as e:  # the native extension is not built here
        pytest.skip(f"{backend}: {e}")
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    for t in LOWBIT_TYPES:
        w = b.prepare(weight(t, 40, 256, seed=1))
        y = b.matmul(w, x)
        np.testing.assert_array_equal(y, nm.matmul(weight(t, 40, 256, seed=1), x))
        np.testing.assert_array_equal(b.get_rows(w, np.array([39, 0])), nm.get_rows(weight(t, 40, 256, seed=1), np.array([39, 0])))


def test_native_runs_every_lowbit_type_in_c():
    try:
        from edgeinfer.kernels import native
        from edgeinfer.kernels.native import _plan

        b = get_backend("native", n_threads=1)
    except Exception as e:
        pytest.skip(f"native: {e}")
    x = np.random.default_rng(2).standard_normal((9, 512)).astype(np.float32)
    for t in LOWBIT_TYPES:
        w = weight(t, 17, 512, seed=3)
        assert t in native.LOWBIT_C_TYPES and _plan(w)[1] >= 0
        # C (every ISA) and Numba compute the same float operations in the same order
        np.testing.assert_array_equal(b.matmul(w, x).view(np.uint32), nm.matmul(w, x).view(np.uint32))


_ISA_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from test_matmul_lowbit import weight
from edgeinfer.kernels import native
from edgeinfer.kernels.numba import matmul as nm
assert native.native_isa() == {isa!r}, native.native_isa()
b = native.NativeBackend(2)
x = np.random.default_rng(4).standard_normal((5, 512)).astype(np.float32)
for t in native.LOWBIT_C_TYPES:
    w = weight(t, 19, 512, seed=6)
    assert np.array_equal(b.matmul(w, x).view(np.uint32), nm.matmul(w, x).view(np.uint32)), t.name
print("ok")
"""


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_every_native_isa_gives_the_numba_bits(isa):
    try:
        from edgeinfer.kernels import native

        if isa not in native.isas():
            pytest.skip(f"{isa} is not available here")
    except Exception as e:
        pytest.skip(f"native: {e}")
    env = dict(os.environ, EDGEINFER_NATIVE_ISA=isa)
    script = _ISA_SCRIPT.format(tests=os.path.dirname(__file__), isa=isa)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("ggml_type", LOWBIT_TYPES, ids=lambda t: t.name)
def test_vector_dots_are_the_scalar_loops(ggml_type):
    """The 32-lane kernels (the table's) and the plain loops give the same bits (the same integer sums)."""
    from edgeinfer.kernels.numba import lowbit

    name = nm.FORMATS[ggml_type]["name"]
    w = weight(ggml_type, 6, 512, seed=9)
    x = np.random.default_rng(9).standard_normal((2, 512)).astype(np.float32)
    scalar = getattr(lowbit, f"_dot_{name}")
    out = np.empty((2, 6), np.float32)
    _check_scalar(scalar, ggml_type, np.ascontiguousarray(w.raw).reshape(-1), x, out)
    np.testing.assert_array_equal(out.view(np.uint32), nm.matmul(w, x).view(np.uint32))


def _check_scalar(dot, ggml_type, flat, x, out):
    from numba import njit

    from edgeinfer.kernels.numba.matmul import ACT_Q8_0, ACT_Q8_K, _quantize_activations

    kind = ACT_Q8_0 if nm.VEC_DOT_TYPE[ggml_type] == T.Q8_0 else ACT_Q8_K
    block_size, _ = GGML_QUANT_SIZES[ggml_type]

    @njit
    def run(flat, x, out, kind, nb):
        yq, yd, ys, ybs, yf, yqs = _quantize_activations(x, kind)
        row_bytes = flat.size // out.shape[1]
        for t in range(out.shape[0]):
            for r in range(out.shape[1]):
                out[t, r] = dot(flat, r * row_bytes, nb, yq, yd, ys, ybs, yf, t)

    run(flat, x, out, kind, x.shape[1] // block_size)


def test_tables_are_consistent():
    for t in LOWBIT_TYPES:
        assert t in nm.FORMATS and t in nm.MATMUL_KERNELS and t in nd.KERNELS
    assert nm.VEC_DOT_TYPE[T.MXFP4] == T.Q8_0 and nm.VEC_DOT_TYPE[T.IQ2_XXS] == T.Q8_K


_GENERIC_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from edgeinfer.kernels.numba import lowbit
assert not lowbit.USE_AVX2
import test_matmul_lowbit as m
for t in m.LOWBIT_TYPES:
    m.test_matmul_matches_emulation(t, 2)
    m.test_vector_dots_are_the_scalar_loops(t)
print("generic ok")
"""


def test_generic_vector_code():
    """The portable LLVM IR (no AVX2: ARM), forced here in a subprocess with its own Numba cache."""
    import hashlib
    import shutil
    import tempfile
    from pathlib import Path

    from edgeinfer.kernels.numba import lowbit

    if not lowbit.USE_AVX2:
        pytest.skip("the generic vector code is what every test above runs")
    env = dict(os.environ, EDGEINFER_GENERIC_SIMD="1")
    sources = hashlib.sha1(Path(lowbit.__file__).read_bytes() + Path(nm.__file__).read_bytes()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"edgeinfer-numba-lowbit-generic-{sources}"
    for stale in cache.parent.glob("edgeinfer-numba-lowbit-generic-*"):
        if stale != cache:
            shutil.rmtree(stale, ignore_errors=True)
    env["NUMBA_CACHE_DIR"] = str(cache)
    script = _GENERIC_SCRIPT.format(tests=os.path.dirname(__file__))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "generic ok" in done.stdout, done.stderr[-3000:]
