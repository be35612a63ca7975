"""The Mixture-of-Experts layer (edgeinfer.nn.moe) on its own: routing rules and their edge cases (ties,
k = 1, k = n_expert, sigmoid gating, renormalization, scale), the layer against a float64 numpy
computation on every backend, and what it reads: only the chosen experts, each once per batch."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from edgeinfer.kernels import get_backend
from edgeinfer.kernels.base import QTensor
from edgeinfer.nn import GatedMLP, Linear
from edgeinfer.kernels import numpy_ops
from edgeinfer.nn.moe import MoE, Routing, expert_slice
from edgeinfer.quant import get_format, quantize

BACKENDS = ["reference", "numba"]
try:
    from edgeinfer.kernels.native import available as _native_available

    if _native_available():
        BACKENDS.append("native")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(params=BACKENDS)
def backend(request):
    return get_backend(request.param) if request.param == "reference" else get_backend(request.param, n_threads=2)


def _qtensor(name: str, x: np.ndarray, qtype: T = T.F32) -> QTensor:
    """x float32 numpy order (..., n_rows, n_cols) -> a QTensor as the GGUF loader makes it."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_cols = x.shape[-1]
    if qtype == T.F32:
        raw = x.view(np.uint8).reshape(*x.shape[:-1], n_cols * 4)
    else:
        raw = quantize(x.reshape(-1, n_cols), qtype).reshape(*x.shape[:-1], -1)
    return QTensor(name, qtype, tuple(reversed(x.shape)), raw)


def _dequant(t: QTensor) -> np.ndarray:
    """float64 values of a QTensor, through the numpy reference of its format."""
    fmt = get_format(t.ggml_type)
    return fmt.dequantize(t.raw.reshape(-1, t.raw.shape[-1])).reshape(t.shape).astype(np.float64)


def _silu(x):
    return x / (1 + np.exp(-x))


# -- routing --------------------------------------------------------------------------------------------


def route(logits, routing: Routing, bias=None, backend=None):
    r = routing
    ops = numpy_ops if backend is None else backend
    return ops.moe_route(logits, r.n_used, r.gating, r.norm_weights, r.scale, bias)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_route_softmax_top_k_and_renormalization(backend):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6, 8)).astype(np.float32)
    chosen, w = route(logits, Routing(n_used=3, norm_weights=False), backend=backend)
    assert chosen.dtype == np.int32 and w.dtype == np.float32
    probs = _softmax(logits.astype(np.float64))
    want = np.argsort(-probs, axis=1)[:, :3]
    assert np.array_equal(chosen, want)
    assert np.allclose(w, np.take_along_axis(probs, want, 1), rtol=1e-5)
    assert (np.diff(w, axis=1) <= 0).all()  # largest first
    _, wn = route(logits, Routing(n_used=3, norm_weights=True), backend=backend)
    assert np.allclose(wn.sum(1), 1.0, atol=1e-6)
    assert np.allclose(wn, w / w.sum(1, keepdims=True), rtol=1e-5)
    _, ws = route(logits, Routing(n_used=3, norm_weights=True, scale=2.5), backend=backend)
    assert np.allclose(ws, 2.5 * wn, rtol=1e-6)


def test_route_ties_go_to_the_lower_expert_index(backend):
    logits = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]], np.float32)
    chosen, w = route(logits, Routing(n_used=2), backend=backend)
    assert chosen.tolist() == [[1, 2], [0, 1]]
    assert w[0, 0] == w[0, 1] and w[1, 0] == w[1, 1]
    chosen, _ = route(-logits, Routing(n_used=3), backend=backend)
    assert chosen.tolist() == [[3, 0, 1], [0, 1, 2]]


def test_route_k_equal_one_and_all_experts(backend):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (5, 6)).astype(np.float32)
    chosen, w = route(logits, Routing(n_used=1, norm_weights=True), backend=backend)
    assert np.array_equal(chosen[:, 0], logits.argmax(1)) and np.allclose(w, 1.0)
    chosen, w = route(logits, Routing(n_used=6, norm_weights=False), backend=backend)
    assert all(sorted(row) == list(range(6)) for row in chosen.tolist())
    assert np.allclose(w.sum(1), 1.0, atol=1e-6)  # every softmax probability, in order


def test_route_sigmoid_with_selection_bias(backend):
    logits = np.array([[0.0, 1.0, -1.0, 2.0]], np.float32)
    bias = np.array([0.0, 0.0, 5.0, 0.0], np.float32)  # picks expert 2 but does not weigh it
    chosen, w = route(logits, Routing(n_used=2, gating="sigmoid"), bias, backend=backend)
    assert chosen.tolist() == [[2, 3]]
    sig = 1 / (1 + np.exp(-logits[0].astype(np.float64)))
    assert np.allclose(w[0], sig[[2, 3]], rtol=1e-6)


def test_route_backends_match_numpy_on_many_tokens(backend):
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, (200, 64)).astype(np.float32)
    logits[::7, 10] = logits[::7, 20]  # some exact ties too
    for r in (Routing(8, norm_weights=True), Routing(4, gating="sigmoid", scale=1.5)):
        c0, w0 = route(logits, r)
        c1, w1 = route(logits, r, backend=backend)
        assert np.array_equal(c0, c1)
        assert np.allclose(w0, w1, rtol=1e-5, atol=1e-7)


def test_routing_rejects_bad_settings():
    with pytest.raises(ValueError, match="gating"):
        Routing(2, gating="relu")
    with pytest.raises(ValueError, match="at least one"):
        Routing(0)


# -- the layer against float64 --------------------------------------------------------------------------


def _layer(backend, rng, n_embd=64, n_ff=96, n_expert=6, k=2, qtype=T.Q8_0, norm=True, shared=False):
    router_w = rng.normal(0, 0.6, (n_expert, n_embd)).astype(np.float32)
    gate = rng.normal(0, n_embd**-0.5, (n_expert, n_ff, n_embd)).astype(np.float32)
    up = rng.normal(0, n_embd**-0.5, (n_expert, n_ff, n_embd)).astype(np.float32)
    down = rng.normal(0, n_ff**-0.5, (n_expert, n_embd, n_ff)).astype(np.float32)
    router = Linear(_qtensor("router", router_w), backend)
    q = {name: _qtensor(name, x, qtype) for name, x in (("gate", gate), ("up", up), ("down", down))}
    sh = sh_gate = None
    if shared:
        sh = GatedMLP(*(Linear(_qtensor(f"sh_{n}", rng.normal(0, 0.1, s).astype(np.float32), qtype), backend)
                        for n, s in (("gate", (n_ff, n_embd)), ("up", (n_ff, n_embd)), ("down", (n_embd, n_ff)))),
                      act="silu")  # fmt: skip
        sh_gate = Linear(_qtensor("sh_inp", rng.normal(0, 0.3, (1, n_embd)).astype(np.float32)), backend)
    layer = MoE(router, q["gate"], q["up"], q["down"], Routing(k, norm_weights=norm), "silu", sh, sh_gate)
    return layer


def _reference(layer: MoE, x: np.ndarray) -> np.ndarray:
    """float64, token by token, expert by expert."""
    x = x.astype(np.float64)
    wr = _dequant(layer.router.weight)
    g, u, d = (_dequant(t) for t in (layer.gate_exps, layer.up_exps, layer.down_exps))
    out = np.zeros_like(x)
    for t in range(len(x)):
        probs = _softmax(wr @ x[t])
        chosen = np.argsort(-probs, kind="stable")[: layer.routing.n_used]
        w = probs[chosen]
        if layer.routing.norm_weights:
            w = w / w.sum()
        for e, we in zip(chosen, w):
            out[t] += we * (d[e] @ (_silu(g[e] @ x[t]) * (u[e] @ x[t])))
        if layer.shared is not None:
            sg, su, sd = (_dequant(lin.weight) for lin in (layer.shared.gate, layer.shared.up, layer.shared.down))
            gate = 1 / (1 + np.exp(-(_dequant(layer.shared_gate.weight) @ x[t])[0]))
            out[t] += gate * (sd @ (_silu(sg @ x[t]) * (su @ x[t])))
    return out


@pytest.mark.parametrize("qtype", [T.F32, T.Q8_0, T.Q4_0])
@pytest.mark.parametrize("k,norm,shared", [(2, True, False), (1, True, False), (6, False, False), (2, False, True)])
def test_layer_matches_float64(backend, qtype, k, norm, shared):
    rng = np.random.default_rng(7)
    layer = _layer(backend, rng, k=k, qtype=qtype, norm=norm, shared=shared)
    x = rng.normal(0, 1, (9, 64)).astype(np.float32)
    want = _reference(layer, x)
    scale = np.abs(want).max()
    # float32 on the reference backend; 8-bit activations (llama.cpp's) on the fast ones
    tol = 1e-5 if backend.name == "reference" or qtype == T.F32 else 0.03
    got = layer(x)
    assert got.shape == x.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= tol * scale
    # one token at a time (the decode path) gives the batch's rows
    rows = np.concatenate([layer(x[i : i + 1]) for i in range(len(x))])
    assert np.abs(rows - got).max() <= 1e-5 * scale


def test_layer_counts_every_routing(backend):
    rng = np.random.default_rng(3)
    layer = _layer(backend, rng, k=2)
    x = rng.normal(0, 1, (11, 64)).astype(np.float32)
    chosen, _ = route(layer.router(x), layer.routing, backend=backend)
    layer(x)
    assert layer.counts.sum() == 22
    assert np.array_equal(layer.counts, np.bincount(chosen.reshape(-1), minlength=6))
    layer.reset_counts()
    assert layer.counts.sum() == 0


def test_layer_rejects_inconsistent_experts():
    be = get_backend("reference")
    rng = np.random.default_rng(0)
    router = Linear(_qtensor("router", rng.normal(0, 1, (4, 32)).astype(np.float32)), be)
    three = _qtensor("e", rng.normal(0, 1, (3, 16, 32)).astype(np.float32))
    with pytest.raises(ValueError, match="4 stacked experts"):
        MoE(router, three, three, three, Routing(2))
    four = _qtensor("e", rng.normal(0, 1, (4, 16, 32)).astype(np.float32))
    with pytest.raises(ValueError, match="only 4"):
        MoE(router, four, four, _qtensor("d", rng.normal(0, 1, (4, 32, 16)).astype(np.float32)), Routing(5))


# -- what it reads ---------------------------------------------------------------------------------------


class SpyBackend:
    """Delegates to a real backend and records the weights every matmul reads."""

    def __init__(self, inner):
        self.inner, self.name, self.reads = inner, inner.name, []

    def matmul(self, w, x, out=None):
        self.reads.append((w.name, x.shape[0]))
        return self.inner.matmul(w, x, out)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_only_the_chosen_experts_are_read_each_once_per_batch():
    spy = SpyBackend(get_backend("numba", n_threads=2))
    rng = np.random.default_rng(11)
    layer = _layer(spy, rng, n_expert=8, k=2)
    x = rng.normal(0, 1, (5, 64)).astype(np.float32)
    chosen, _ = route(layer.router(x), layer.routing)
    spy.reads.clear()
    layer(x)
    experts = set(chosen.reshape(-1).tolist())
    assert len(experts) < 8, "the test wants some expert left out"
    reads = [name for name, _ in spy.reads if name != "router"]
    for part in ("gate", "up", "down"):
        touched = sorted(int(n[len(part) + 1 : -1]) for n in reads if n.startswith(part + "["))
        assert touched == sorted(experts)  # each chosen expert once, no other
    # each expert's matmul sees all of its tokens at once
    per_expert = np.bincount(chosen.reshape(-1), minlength=8)
    for name, n_rows in spy.reads:
        if name.startswith("gate["):
            assert n_rows == per_expert[int(name[5:-1])]
    # decode: a token reads its k experts and nothing else
    spy.reads.clear()
    layer(x[:1])
    assert sorted(int(n.split("[")[1][:-1]) for n, _ in spy.reads if n.startswith("down[")) == sorted(chosen[0].tolist())


def test_expert_slice_is_a_view():
    x = np.arange(3 * 4 * 32, dtype=np.float32).reshape(3, 4, 32)
    t = _qtensor("w", x)
    e = expert_slice(t, 2)
    assert e.ne == (32, 4) and e.name == "w[2]"
    assert np.shares_memory(e.raw, t.raw)
    assert np.array_equal(e.raw.view(np.float32), x[2])
