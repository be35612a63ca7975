"""gemma4: Gemma 4's dense text models, E2B, E4B and 31B (llama.cpp's src/models/gemma4.cpp).

Gemma 3's block (arch/gemma3.py: embedding scaled by sqrt(n_embd), sandwich norms, per-head QK-norm,
NEOX rope, GeGLU) with:
- sliding and global layers as the file lists them (attention.sliding_window_pattern, one bool per
  layer), each kind with its own head size (attention.key_length_swa / key_length), rope size
  (rope.dimension_count_swa / dimension_count), rope base (rope.freq_base_swa / freq_base) and KV-head
  count (attention.head_count_kv, an array);
- "proportional" rope on global layers: rope_freqs.weight divides each pair's frequency, 1e30 for the
  pairs that do not turn;
- attention scale 1 (the QK-norm does the scaling); V RMS-normed per head without a weight; a global
  layer without attn_v uses K's projection as V (31B);
- per-layer embeddings (E2B, E4B): per token and layer a vector of embedding_length_per_layer_input,
  from per_layer_token_embd and a projection of the embedding (per_layer_model_proj,
  per_layer_proj_norm); each layer adds proj(gelu(inp_gate(x)) * that vector), post-normed;
- KV sharing (E2B, E4B): the last attention.shared_kv_layers layers compute no K/V and attend over the
  cache of the last layer of their kind before them; feed_forward_length per layer (double-wide there);
- each layer's output times layer_output_scale; final logit soft-capping;
- the mixture-of-experts model (26B-A4B): a layer with a router (ffn_gate_inp) runs its dense
  feed-forward and its experts side by side on the attention's output, each with its own norms
  (post_ffw_norm_1; pre_ffw_norm_2, post_ffw_norm_2), and adds them before post_ffw_norm. The router
  reads rms_norm(x) / sqrt(n_embd) * ffn_gate_inp.scale; softmax, the top expert_used_count experts,
  their weights renormalized; GeGLU experts (ffn_gate_up_exps, or ffn_gate_exps and ffn_up_exps), expert
  e's output times ffn_down_exps.scale[e].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ..errors import GGUFError, UnsupportedArchitectureError
from ..gguf import GGUFFile
from ..kernels.base import Backend, QTensor
from ..nn import Attention, Embedding, ForwardBatch, Linear, RMSNorm, Rope
from ..nn.kv import kv_type
from ..nn.moe import MoE
from .base import MAX_COUNT, BaseConfig, DecoderModel, MoEConfig, Weights, meta, meta_float, meta_int, meta_per_layer
from .base import read_swa_layers
from .gemma3 import Block as Gemma3Block


@dataclass(frozen=True)
class Config(BaseConfig):
    # BaseConfig's head_dim, n_rot, rope_freq_base are the global layers'; n_head_kv, n_ff the largest
    n_swa: int = 0
    swa_layers: tuple[bool, ...] = ()
    head_dim_swa: int = 0
    n_rot_swa: int = 0
    rope_freq_base_swa: float = 10000.0
    n_head_kv_layers: tuple[int, ...] = ()
    n_ff_layers: tuple[int, ...] = ()
    n_kv_shared: int = 0  # the last layers, without K/V of their own
    n_embd_per_layer: int = 0  # 0: no per-layer embeddings
    # moe (BaseConfig): the experts of the layers with a router; n_ff_exp 0: from the tensors

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        refuse_unsupported(f)
        common = cls.read_common(f, rope_neox=True, per_layer=("attention.head_count_kv", "feed_forward_length"))
        n_layer = common["n_layer"]
        common["attn_scale"] = 1.0  # llama.cpp: f_attention_scale = 1
        if any(name.endswith("ffn_gate_inp.weight") for name in f.tensors):  # llama.cpp's fixed routing
            n_expert = meta_int(f, "expert_count", lo=1, hi=MAX_COUNT)
            n_used = meta_int(f, "expert_used_count", lo=1, hi=n_expert)
            n_ff_exp = meta_int(f, "expert_feed_forward_length", 0)
            common["moe"] = MoEConfig(n_expert, n_used, n_ff_exp, 0, "softmax", True, 1.0)
        meta(f, "attention.sliding_window_pattern")  # required, as llama.cpp's get_arr
        c = cls(
            **common,
            n_swa=meta_int(f, "attention.sliding_window", hi=1 << 31),
            swa_layers=read_swa_layers(f, n_layer, 0),
            head_dim_swa=meta_int(f, "attention.key_length_swa", common["head_dim"], lo=1),
            n_rot_swa=meta_int(f, "rope.dimension_count_swa", common["n_rot"]),
            rope_freq_base_swa=meta_float(f, "rope.freq_base_swa", 10000.0),
            n_head_kv_layers=meta_per_layer(f, "attention.head_count_kv", n_layer, common["n_head"], 1, MAX_COUNT),
            n_ff_layers=meta_per_layer(f, "feed_forward_length", n_layer, lo=1),
            n_kv_shared=meta_int(f, "attention.shared_kv_layers", 0, hi=n_layer),
            n_embd_per_layer=meta_int(f, "embedding_length_per_layer_input", 0),
        )
        c.check(f)
        return c

    def check(self, f: GGUFFile) -> None:
        """GGUFError naming the keys when the per-layer geometry does not hold together."""
        a = self.arch
        if self.head_dim != self.head_dim_v or self.head_dim_swa != meta_int(f, "attention.value_length_swa",
                                                                              self.head_dim_swa):  # fmt: skip
            raise GGUFError(f"{f.path}: Gemma 4 needs {a}.attention.key_length == value_length (and the same for "
                            "the _swa keys); the file is corrupt or forged.")  # fmt: skip
        if self.n_rot_swa < 2 or self.n_rot_swa % 2 or self.n_rot_swa > self.head_dim_swa:
            raise GGUFError(f"{f.path}: {a}.rope.dimension_count_swa is {self.n_rot_swa}, but rope rotates an even "
                            f"number of values from 2 up to the head size ({self.head_dim_swa}).")  # fmt: skip
        if any(self.n_head % h for h in self.n_head_kv_layers):
            raise GGUFError(f"{f.path}: {a}.attention.head_count ({self.n_head}) is not a multiple of every "
                            f"layer's {a}.attention.head_count_kv ({list(self.n_head_kv_layers)}).")  # fmt: skip
        if self.n_kv_shared and self.n_layer_kv < 2:
            raise GGUFError(f"{f.path}: {a}.attention.shared_kv_layers ({self.n_kv_shared}) leaves fewer than 2 of "
                            f"{self.n_layer} layers with a KV cache of their own.")  # fmt: skip
        for il in range(self.n_layer_kv, self.n_layer):
            src = self.kv_source(il)
            if self.is_swa(src) != self.is_swa(il) or self.n_head_kv_layers[src] != self.n_head_kv_layers[il]:
                raise GGUFError(f"{f.path}: layer {il} shares the KV cache of layer {src}, which is of another "
                                f"kind or shape ({a}.attention.sliding_window_pattern, head_count_kv).")  # fmt: skip

    def kv_dims(self) -> dict:
        """A cache for the layers with K/V of their own, each with its kind's head size and KV heads."""
        n = self.n_layer_kv
        head_dims = tuple(self.layer_head_dim(il) for il in range(n))
        return dict(n_layer=n, n_head_kv=self.n_head_kv_layers[:n], head_dim=head_dims, head_dim_v=head_dims)

    def is_swa(self, il: int) -> bool:
        return self.swa_layers[il]

    def layer_head_dim(self, il: int) -> int:
        return self.head_dim_swa if self.is_swa(il) else self.head_dim

    @property
    def n_layer_kv(self) -> int:
        """Layers 0..n_layer_kv-1 have K/V of their own (llama.cpp's n_layer_kv_from_start)."""
        return self.n_layer - self.n_kv_shared

    def kv_source(self, il: int) -> int:
        """The layer whose cache layer il attends over: itself, or for a shared layer the last layer of its
        kind with a cache (llama.cpp's layer_reuse_cb)."""
        if il < self.n_layer_kv:
            return il
        return self.n_layer_kv - (2 if self.is_swa(il) else 1)


def refuse_unsupported(f: GGUFFile) -> None:
    """UnsupportedArchitectureError, one sentence, for the Gemma 4 files edgeinfer does not run."""
    if any(name.endswith("attn_qkv.weight") for name in f.tensors):
        raise UnsupportedArchitectureError(
            f"{f.path} stores Gemma 4's Q, K and V as one fused tensor (attn_qkv), which edgeinfer does not "
            "read; use the file as llama.cpp's converter writes it (attn_q, attn_k, attn_v)."
        )


class Gemma4Attention(Attention):
    """nn.Attention with V RMS-normed per head (no weight) before it is stored."""

    def __init__(self, *args, v_eps: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.v_norm = RMSNorm(np.ones(self.head_dim_v, np.float32), v_eps, self.backend)

    def _project(self, x: np.ndarray) -> np.ndarray:
        qkv = super()._project(x)  # (n, H D + Hkv D + Hkv Dv)
        n, v0 = x.shape[0], (self.n_head + self.n_head_kv) * self.head_dim
        v = np.ascontiguousarray(qkv[:, v0:]).reshape(n, self.n_head_kv, self.head_dim_v)
        qkv[:, v0:] = self.v_norm(v).reshape(n, -1)
        return qkv


class SharedKVAttention:
    """A layer without K/V of its own: its queries (QK-normed, rotated) attend over the cache of layer
    `kv_layer`, which this pass has already written."""

    def __init__(self, wq: Linear, wo: Linear, q_norm: RMSNorm, rope: Rope, n_head: int, head_dim: int,
                 scale: float, n_swa: int, kv_layer: int):  # fmt: skip
        self.wq, self.wo, self.q_norm, self.rope = wq, wo, q_norm, rope
        self.backend = wo.backend
        self.n_head, self.head_dim, self.scale, self.n_swa, self.kv_layer = n_head, head_dim, scale, n_swa, kv_layer

    def __call__(self, x: np.ndarray, batch: ForwardBatch, il: int,
                 cb: Callable[[str, np.ndarray], None] | None = None) -> np.ndarray:  # fmt: skip
        """x (n_rows, n_embd) -> (n_rows, n_embd)"""
        q = self.q_norm(self.wq(x).reshape(x.shape[0], self.n_head, self.head_dim))  # (n, H, D)
        q = self.rope(q, batch.positions, batch.max_pos, self.backend)
        if cb is not None:
            cb("Qcur", q)
        items = []
        for s in batch.seqs:
            k, v, _, cells = s.cache.storage(self.kv_layer)
            items.append((np.ascontiguousarray(q[s.r0 : s.r1]), k, v, s.positions, s.kv_pos, cells))
        outs = self.backend.attention_many(items, self.n_swa, self.scale)
        return self.wo(outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0))


class PerLayerInput:
    """What a layer adds from its per-layer embedding: post_norm(proj(gelu(inp_gate(x)) * inp))."""

    def __init__(self, inp_gate: Linear, proj: Linear, post_norm: RMSNorm):
        self.inp_gate, self.proj, self.post_norm = inp_gate, proj, post_norm
        self.backend = proj.backend

    def __call__(self, x: np.ndarray, inp: np.ndarray) -> np.ndarray:
        """x (n, n_embd), inp (n, n_embd_per_layer) -> (n, n_embd)"""
        g = self.backend.glu(np.concatenate([self.inp_gate(x), inp], axis=1), "gelu_tanh")  # gelu(gate) * inp
        return self.post_norm(self.proj(g))


class Experts:
    """A mixture-of-experts layer's routed part: the experts (nn.moe.MoE) on pre_ffw_norm_2(x), routed by
    ffn_gate_inp from rms_norm(x) / sqrt(n_embd) * ffn_gate_inp.scale, then post_ffw_norm_2."""

    def __init__(self, moe: MoE, router_scale: np.ndarray, eps: float, pre_norm: RMSNorm, post_norm: RMSNorm):
        self.moe, self.pre_ffw_norm_2, self.post_ffw_norm_2 = moe, pre_norm, post_norm
        self.router_scale, self.eps = router_scale, eps
        self.backend = moe.backend
        self.ones = np.ones_like(router_scale)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (n, n_embd), the attention's output (the residual) -> (n, n_embd)"""
        r = self.backend.rms_norm(x, self.ones, self.eps) * np.float32(1.0 / math.sqrt(x.shape[1]))
        logits = self.moe.router(r * self.router_scale)  # (n, n_expert)
        return self.post_ffw_norm_2(self.moe(self.pre_ffw_norm_2(x), logits))


class Block(Gemma3Block):
    """Gemma 3's block, then the per-layer embedding's part and the layer's output scale. In a layer with
    experts the feed-forward is post_ffw_norm(post_ffw_norm_1(ffn(ffn_norm(x))) + experts(x))."""

    def __init__(self, *parts, per_layer: PerLayerInput | None = None, out_scale: float = 1.0,
                 experts: Experts | None = None, post_ffw_norm_1: RMSNorm | None = None):  # fmt: skip
        super().__init__(*parts)
        self.per_layer, self.out_scale = per_layer, out_scale
        self.experts, self.post_ffw_norm_1 = experts, post_ffw_norm_1

    def __call__(self, x, batch, il, cb=None, per_layer_input: np.ndarray | None = None) -> np.ndarray:
        if self.experts is None:
            x = super().__call__(x, batch, il, cb)
        else:
            x = x + self.post_attention_norm(self.attn(self.attn_norm(x), batch, il, cb))
            h = self.post_ffw_norm_1(self.ffn(self.ffn_norm(x)))
            x = x + self.post_ffw_norm(h + self.experts(x))
        if self.per_layer is not None:
            x = x + self.per_layer(x, per_layer_input)
        if self.out_scale != 1.0:
            x *= np.float32(self.out_scale)
        return x


class PerLayerEmbedding:
    """The per-layer inputs of a batch: ((proj_norm(model_proj(x) / sqrt(n_embd)) + embd[token] *
    sqrt(n_pl)) / sqrt(2), float32 (n, n_layer, n_pl), x the scaled token embedding."""

    def __init__(self, embd: Embedding, model_proj: Linear, proj_norm: RMSNorm, n_layer: int, n_pl: int):
        self.embd, self.model_proj, self.proj_norm = embd, model_proj, proj_norm
        self.n_layer, self.n_pl = n_layer, n_pl

    def __call__(self, tokens: np.ndarray, x: np.ndarray) -> np.ndarray:
        n, n_embd = x.shape
        inp = self.embd(tokens).reshape(n, self.n_layer, self.n_pl) * np.float32(math.sqrt(self.n_pl))
        proj = self.model_proj(x) * np.float32(1.0 / math.sqrt(n_embd))
        proj = self.proj_norm(proj.reshape(n, self.n_layer, self.n_pl))
        return (proj + inp) * np.float32(1.0 / math.sqrt(2.0))


class Model(DecoderModel):
    arch = "gemma4"
    config: Config
    per_layer: PerLayerEmbedding | None = None

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "Model":
        c = Config.from_gguf(f)
        w = Weights(f, backend)
        rope_local = Rope(replace(c.rope_params(c.rope_freq_base_swa, 1.0), n_rot=c.n_rot_swa))
        rope_global = None
        if not all(c.swa_layers):  # proportional rope: rope_freqs divides each pair's frequency
            rope_global = Rope(c.rope_params(), w.vector("rope_freqs.weight", c.head_dim // 2)[: c.n_rot // 2])
        blocks = [cls.load_block(w, c, il, rope_local if c.is_swa(il) else rope_global) for il in range(c.n_layer)]
        model = cls(c, backend, w.embedding(c), blocks, w.norm("output_norm", c.n_embd, c.rms_eps), w.output(c),
                    embd_scale=math.sqrt(c.n_embd))  # fmt: skip
        n_pl = c.n_embd_per_layer
        if n_pl:
            model.per_layer = PerLayerEmbedding(
                Embedding(w.qtensor("per_layer_token_embd.weight", (n_pl * c.n_layer, c.n_vocab)), w.backend),
                w.linear("per_layer_model_proj", c.n_embd, n_pl * c.n_layer),
                w.norm("per_layer_proj_norm", n_pl, c.rms_eps),
                c.n_layer,
                n_pl,
            )
        return model

    @staticmethod
    def load_block(w: Weights, c: Config, il: int, rope: Rope) -> Block:
        p = f"blk.{il}."
        hd, hkv, n_swa = c.layer_head_dim(il), c.n_head_kv_layers[il], c.n_swa if c.is_swa(il) else 0
        wq = w.linear(p + "attn_q", c.n_embd, c.n_head * hd)
        wo = w.linear(p + "attn_output", c.n_head * hd, c.n_embd)
        q_norm = w.norm(p + "attn_q_norm", hd, c.rms_eps)
        if il >= c.n_layer_kv:
            attn = SharedKVAttention(wq, wo, q_norm, rope, c.n_head, hd, c.attn_scale, n_swa, c.kv_source(il))
        else:
            wk = w.linear(p + "attn_k", c.n_embd, hkv * hd)
            wv = w.linear(p + "attn_v", c.n_embd, hkv * hd) if w.has(p + "attn_v.weight") else wk  # V = K's projection
            attn = Gemma4Attention(wq, wk, wv, wo, c.n_head, hkv, hd, hd, rope, c.attn_scale, q_norm=q_norm,
                                   k_norm=w.norm(p + "attn_k_norm", hd, c.rms_eps), n_swa=n_swa,
                                   v_eps=c.rms_eps)  # fmt: skip
        ffn = w.gated_mlp(p, c.n_embd, c.n_ff_layers[il], "gelu_tanh")
        per_layer = None
        if c.n_embd_per_layer:
            per_layer = PerLayerInput(w.linear(p + "inp_gate", c.n_embd, c.n_embd_per_layer),
                                      w.linear(p + "proj", c.n_embd_per_layer, c.n_embd),
                                      w.norm(p + "post_norm", c.n_embd, c.rms_eps))  # fmt: skip
        scale = w.vector(p + "layer_output_scale.weight", 1)[0] if w.has(p + "layer_output_scale.weight") else 1.0
        norm = lambda name: w.norm(p + name, c.n_embd, c.rms_eps)  # noqa: E731
        experts = post_ffw_norm_1 = None
        if w.has(p + "ffn_gate_inp.weight"):
            experts = Experts(Model.load_moe(w, c, p), w.vector(p + "ffn_gate_inp.scale", c.n_embd), c.rms_eps,
                              norm("pre_ffw_norm_2"), norm("post_ffw_norm_2"))  # fmt: skip
            post_ffw_norm_1 = norm("post_ffw_norm_1")
        return Block(norm("attn_norm"), attn, norm("post_attention_norm"), norm("ffn_norm"), ffn,
                     norm("post_ffw_norm"), per_layer=per_layer, out_scale=float(scale), experts=experts,
                     post_ffw_norm_1=post_ffw_norm_1)  # fmt: skip

    @staticmethod
    def load_moe(w: Weights, c: Config, p: str) -> MoE:
        """Block p's experts: gate and up fused (ffn_gate_up_exps: gate's rows, then up's) or apart."""
        m = c.moe
        if m is None:
            raise GGUFError(f"{w.f.path}: {p}ffn_gate_inp.weight routes to experts, but the file has no "
                            f"{c.arch}.expert_count; the file is incomplete.")  # fmt: skip
        fused = w.has(p + "ffn_gate_up_exps.weight")
        n_ff = m.n_ff_exp or w._dim(p + ("ffn_gate_up_exps.weight" if fused else "ffn_up_exps.weight"), 1) // (
            2 if fused else 1)
        if fused:
            gu = w.qtensor(p + "ffn_gate_up_exps.weight", (c.n_embd, 2 * n_ff, m.n_expert))
            ne = (c.n_embd, n_ff, m.n_expert)
            gate = QTensor(gu.name + "[gate]", gu.ggml_type, ne, gu.raw[:, :n_ff])  # rows of each expert
            up = QTensor(gu.name + "[up]", gu.ggml_type, ne, gu.raw[:, n_ff:])
        else:
            gate = w.qtensor(p + "ffn_gate_exps.weight", (c.n_embd, n_ff, m.n_expert))
            up = w.qtensor(p + "ffn_up_exps.weight", (c.n_embd, n_ff, m.n_expert))
        down = w.qtensor(p + "ffn_down_exps.weight", (n_ff, c.n_embd, m.n_expert))
        scale = w.vector(p + "ffn_down_exps.scale", m.n_expert) if w.has(p + "ffn_down_exps.scale") else None
        return MoE(w.linear(p + "ffn_gate_inp", c.n_embd, m.n_expert), gate, up, down, m.routing(), "gelu_tanh",
                   down_scale=scale)  # fmt: skip

    def moe_layers(self) -> list:
        return [b.experts.moe for b in self.blocks if b.experts is not None]

    def _blocks(self, batch: ForwardBatch) -> np.ndarray:
        x = self._embed(batch.tokens)
        per_layer = None if self.per_layer is None else self.per_layer(batch.tokens, x)  # (n, n_layer, n_pl)
        for il, block in enumerate(self.blocks):
            cb = self._cb(il)
            x = block(x, batch, il, cb, None if per_layer is None else np.ascontiguousarray(per_layer[:, il]))
            if cb is not None:
                cb("l_out", x)
        batch.commit()
        return x

    def set_kv_type(self, name: str) -> None:
        t = kv_type(name)
        for d in {self.config.head_dim, self.config.head_dim_swa}:
            t.check(d, d)
        self.kv_type = t.name
