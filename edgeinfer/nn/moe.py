"""Mixture-of-Experts feed-forward, as llama.cpp's build_moe_ffn computes it:

    logits  = router(x)                                   (n, n_expert)
    probs   = softmax(logits)            (or sigmoid)
    chosen  = the n_used largest probs per token, largest first; equal probs: the lower expert index
    w       = probs[chosen]  (/ sum(w) when the family renormalizes)  (* scale)
            ("softmax_weight", gpt-oss: chosen by the logits, w = softmax of the chosen logits)
    out     = sum_i w_i * down_e(act(gate_e(x)) * up_e(x)),  e = chosen[i], summed in that order
            (+ sigmoid(shared_gate(x)) * shared(x), Qwen2-MoE's shared expert)
    gpt-oss adds per-expert biases: gate_e(x) + gate_b[e], up_e(x) + up_b[e], down_e(.) + down_b[e].
    Gemma 4: the router's logits come from the caller, and expert e's output is scaled by down_scale[e].

Only the chosen experts' weights are read. The expert tensors stay stacked 3-D in the file (n_expert
slices of (n_ff, n_embd)); each expert is a zero-copy view of its slice, so an expert no token picks is
never paged in. In a batch the tokens are grouped by expert: each chosen expert runs one matmul over all
of its tokens, so its weights are read once per batch, not once per token.

Counts of how often each expert was chosen are kept per layer (`counts`): what people deciding which
experts to keep in fast memory want to know.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.base import QTensor
from .linear import Linear
from .mlp import ACTIVATIONS, GatedMLP

GATING_FUNCTIONS = ("softmax", "sigmoid", "softmax_weight")


@dataclass(frozen=True)
class Routing:
    """How a layer's router turns logits into experts and weights.

    n_used: experts per token (k); gating: "softmax" or "sigmoid" of the router logits; norm_weights:
    divide the k weights by their sum; scale: multiply them by it afterwards (1.0: none)."""

    n_used: int
    gating: str = "softmax"
    norm_weights: bool = False
    scale: float = 1.0

    def __post_init__(self):
        if self.gating not in GATING_FUNCTIONS:
            raise ValueError(f"unknown gating function {self.gating!r}; known: {', '.join(GATING_FUNCTIONS)}")
        if self.n_used < 1:
            raise ValueError(f"a token must use at least one expert, not {self.n_used}")


def expert_slice(w: QTensor, e: int) -> QTensor:
    """Expert e of a stacked 3-D weight (raw (n_expert, n_rows, row_bytes)) as a 2-D weight: a view of
    its bytes, no copy."""
    return QTensor(f"{w.name}[{e}]", w.ggml_type, tuple(w.ne[:2]), w.raw[e])


class MoE:
    """A routed feed-forward over stacked experts, with an optional shared expert.

    router: Linear n_embd -> n_expert; gate/up: QTensor ne (n_embd, n_ff, n_expert); down: ne (n_ff,
    n_embd, n_expert); shared: a GatedMLP run for every token; shared_gate: Linear n_embd -> 1, whose
    sigmoid scales the shared expert's output (None: unscaled); biases: (gate_b (n_expert, n_ff), up_b
    (n_expert, n_ff), down_b (n_expert, n_embd)) float32, added to each expert's products, or None."""

    def __init__(
        self,
        router: Linear,
        gate: QTensor,
        up: QTensor,
        down: QTensor,
        routing: Routing,
        act: str = "silu",
        shared: GatedMLP | None = None,
        shared_gate: Linear | None = None,
        selection_bias: np.ndarray | None = None,
        biases: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        down_scale: np.ndarray | None = None,
    ):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
        n_expert = router.n_out
        for t in (gate, up, down):
            if len(t.ne) != 3 or t.ne[2] != n_expert:
                raise ValueError(f"{t.name}: expected {n_expert} stacked experts, got shape {t.ne}")
        if routing.n_used > n_expert:
            raise ValueError(f"{routing.n_used} experts per token, but the layer has only {n_expert}")
        self.router = router
        self.backend = router.backend
        self.routing = routing
        self.act = act
        self.n_expert = n_expert
        self.n_ff = gate.ne[1]
        self.gate_exps, self.up_exps, self.down_exps = gate, up, down
        # per-expert views, made once (backends cache per-weight plans)
        self.gate = [Linear(expert_slice(gate, e), self.backend) for e in range(n_expert)]
        self.up = [Linear(expert_slice(up, e), self.backend) for e in range(n_expert)]
        self.down = [Linear(expert_slice(down, e), self.backend) for e in range(n_expert)]
        self.shared, self.shared_gate = shared, shared_gate
        self.selection_bias = selection_bias
        self.gate_b = self.up_b = self.down_b = None
        if biases is not None:
            self.gate_b, self.up_b, self.down_b = (np.ascontiguousarray(b, dtype=np.float32) for b in biases)
            want = [(n_expert, self.n_ff), (n_expert, self.n_ff), (n_expert, down.ne[1])]
            if [b.shape for b in (self.gate_b, self.up_b, self.down_b)] != want:
                raise ValueError(f"expert biases: expected shapes {want}")
        self.down_scale = down_scale  # float32 (n_expert,): expert e's output times down_scale[e] (Gemma 4)
        self.counts = np.zeros(n_expert, dtype=np.int64)  # how often each expert was chosen

    def stacked_sources(self) -> list[str]:
        return self.shared.stacked_sources() if self.shared is not None else []

    def expert_ffn(self, e: int, x: np.ndarray) -> np.ndarray:
        """Expert e on the rows x (m, n_embd) -> (m, n_embd)."""
        gu = np.concatenate([self.gate[e](x), self.up[e](x)], axis=1)  # (m, 2 n_ff)
        if self.gate_b is not None:
            gu[:, : self.n_ff] += self.gate_b[e]
            gu[:, self.n_ff :] += self.up_b[e]
        y = self.down[e](self.backend.glu(gu, self.act))
        if self.down_b is not None:
            y += self.down_b[e]
        return y

    def __call__(self, x: np.ndarray, logits: np.ndarray | None = None) -> np.ndarray:
        """x (n_tokens, n_embd) -> (n_tokens, n_embd). logits (n_tokens, n_expert): the router's, when the
        caller routes from another input than x (Gemma 4); default router(x)."""
        n, n_embd = x.shape
        r = self.routing
        chosen, weights = self.backend.moe_route(
            self.router(x) if logits is None else logits, r.n_used, r.gating, r.norm_weights, r.scale,
            self.selection_bias,
        )
        if self.down_scale is not None:  # (down_e(h) * s_e) * w = down_e(h) * (s_e * w)
            weights = weights * self.down_scale[chosen]
        k = chosen.shape[1]
        if n == 1:  # decode: the token's experts in order, gate and up written side by side
            self.counts[chosen[0]] += 1  # k distinct experts
            be, f = self.backend, self.n_ff
            gu = np.empty((1, 2 * f), dtype=np.float32)  # one row: both halves are C-contiguous
            g, u = gu[:, :f], gu[:, f:]
            out = None
            for e, w in zip(chosen[0].tolist(), weights[0].tolist()):
                be.matmul(self.gate[e].weight, x, g)
                be.matmul(self.up[e].weight, x, u)
                if self.gate_b is not None:
                    g += self.gate_b[e]
                    u += self.up_b[e]
                y = be.matmul(self.down[e].weight, be.glu(gu, self.act))
                if self.down_b is not None:
                    y += self.down_b[e]
                y *= np.float32(w)
                if out is None:
                    out = y
                else:
                    out += y
        else:  # prefill: every chosen expert once, over all of its tokens
            flat = chosen.reshape(-1)
            per_expert = np.bincount(flat, minlength=self.n_expert)
            self.counts += per_expert
            slots = np.empty((n, k, n_embd), dtype=np.float32)  # each token's k weighted outputs
            order = np.argsort(flat, kind="stable")  # (token, slot) pairs grouped by expert
            start = 0
            for e in np.flatnonzero(per_expert):
                pairs = order[start : start + per_expert[e]]
                start += per_expert[e]
                tok, slot = pairs // k, pairs % k
                y = self.expert_ffn(int(e), np.ascontiguousarray(x[tok]))
                y *= weights[tok, slot][:, None]
                slots[tok, slot] = y
            out = slots[:, 0].copy()
            for i in range(1, k):  # llama.cpp adds the k outputs in slot order
                out += slots[:, i]
        if self.shared is not None:
            s = self.shared(x)
            if self.shared_gate is not None:
                g = self.shared_gate(x)  # (n, 1)
                s *= np.float32(1.0) / (np.float32(1.0) + np.exp(-g))
            out += s
        return out

    def reset_counts(self) -> None:
        self.counts[:] = 0


__all__ = ["GATING_FUNCTIONS", "MoE", "Routing", "expert_slice"]
