"""What every decoder-only architecture shares: the hyperparameters all of them read from metadata, a
weight loader that checks names and shapes (and loads the attention and feed-forward most blocks have),
and the forward skeleton (embed, blocks, norm, output); for the families whose sliding-window layers rope
with their own base (Gemma 2, gpt-oss, Gemma 3), which layers those are and the loader that gives each
block its kind's rope.

An architecture file (llama.py, gemma3.py, ...) adds its own Config fields and its decoder block.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import EdgeInferError, GGUFError, UnsupportedArchitectureError
from ..gguf import GGUFFile
from ..gguf import typed
from ..kernels.base import Backend, QTensor
from ..nn import Attention, Embedding, ForwardBatch, GatedMLP, KVCacheLike, Linear, RMSNorm, Rope, RopeParams
from ..nn.moe import MoE, Routing
from ..nn.kv import DEFAULT_KV_TYPE, kv_type

_REQUIRED = object()

Trace = Callable[[str, int, np.ndarray], None]  # (name, layer or -1, tensor), llama.cpp's cb()


def meta(f: GGUFFile, suffix: str, default: Any = _REQUIRED) -> Any:
    """`{general.architecture}.{suffix}`; GGUFError naming the key if it is required and missing."""
    key = f"{f.architecture}.{suffix}"
    if key in f.metadata:
        return f.metadata[key]
    if default is _REQUIRED:
        raise GGUFError(
            f"{f.path} lacks the metadata key {key!r}, which a {f.architecture} model needs; "
            "the file is incomplete or was written by a converter edgeinfer does not know."
        )
    return default


# Typed reads of `{arch}.{suffix}` (edgeinfer.gguf.typed): the type and range are checked here, so a
# forged value is a GGUFError naming its key, never a bare int()/float() error inside a layer.
MAX_DIM = 1 << 24  # a width (n_embd, n_ff, head size): real models stay below 1 << 17
MAX_COUNT = 1 << 16  # a count (layers, heads, experts)


def meta_int(f: GGUFFile, suffix: str, default: Any = _REQUIRED, lo: int | None = 0, hi: int | None = MAX_DIM) -> Any:
    key = f"{f.architecture}.{suffix}"
    if key not in f.metadata:
        return meta(f, suffix, default)
    return typed.as_int(key, f.metadata[key], lo, hi, where=f.path)


def meta_float(f: GGUFFile, suffix: str, default: Any = _REQUIRED, lo: float | None = None,
               hi: float | None = None) -> Any:  # fmt: skip
    key = f"{f.architecture}.{suffix}"
    if key not in f.metadata:
        return meta(f, suffix, default)
    return typed.as_float(key, f.metadata[key], lo, hi, where=f.path)


def meta_bool(f: GGUFFile, suffix: str, default: Any = _REQUIRED) -> Any:
    key = f"{f.architecture}.{suffix}"
    if key not in f.metadata:
        return meta(f, suffix, default)
    return typed.as_bool(key, f.metadata[key], where=f.path)


def meta_str(f: GGUFFile, suffix: str, default: Any = _REQUIRED) -> Any:
    key = f"{f.architecture}.{suffix}"
    if key not in f.metadata:
        return meta(f, suffix, default)
    return typed.as_str(key, f.metadata[key], where=f.path, max_len=256)


def meta_per_layer(f: GGUFFile, suffix: str, n_layer: int, default: Any = _REQUIRED, lo: int = 0,
                   hi: int = MAX_DIM) -> tuple[int, ...]:  # fmt: skip
    """An integer key as one value per layer (llama.cpp's get_key_or_arr): the file's array of at least
    n_layer values, or its one value repeated."""
    v = meta(f, suffix, default)
    key = f"{f.architecture}.{suffix}"
    if not isinstance(v, np.ndarray):
        return (typed.as_int(key, v, lo, hi, where=f.path),) * n_layer
    arr = typed.as_num_array(key, v, where=f.path, integer=True)
    if arr.size < max(n_layer, 1):
        raise GGUFError(f"{f.path}: the metadata key {key!r} has {arr.size} values for {n_layer} layers; "
                        "the file is corrupt.")  # fmt: skip
    return tuple(typed.as_int(key, x, lo, hi, where=f.path) for x in arr[:n_layer])


def _per_layer_int(f: GGUFFile, suffix: str, default: Any = _REQUIRED, lo: int = 0, hi: int = MAX_DIM,
                   varying: bool = False) -> int:  # fmt: skip
    """An integer key that some converters write as one value per layer (all equal here; the largest
    when `varying`: the architecture reads the values per layer itself, meta_per_layer)."""
    v = meta(f, suffix, default)
    key = f"{f.architecture}.{suffix}"
    if not isinstance(v, np.ndarray):
        return typed.as_int(key, v, lo, hi, where=f.path)
    arr = typed.as_num_array(key, v, where=f.path, integer=True)
    if arr.size == 0:
        raise GGUFError(f"{f.path}: the metadata key {key!r} is an empty array; the file is corrupt.")
    values = set(typed.as_int(key, x, lo, hi, where=f.path) for x in np.unique(arr))
    if len(values) != 1 and varying:
        return max(values)
    if len(values) != 1:
        raise UnsupportedArchitectureError(
            f"{f.path}: {f.architecture}.{suffix} differs between layers ({sorted(values)}); "
            "edgeinfer supports only the same value in every layer."
        )
    return values.pop()


# llama.cpp's llama_expert_gating_func_type, as files store it in {arch}.expert_gating_func
_GATING_FUNCS = {1: "softmax", 2: "sigmoid"}


@dataclass(frozen=True)
class MoEConfig:
    """A Mixture-of-Experts feed-forward's hyperparameters, from the file's metadata.

    The routing rules come from the keys the file carries (expert_gating_func, expert_weights_norm,
    expert_weights_scale); where it is silent, from the family's defaults (`norm_default`: whether
    llama.cpp renormalizes the chosen experts' weights for that family)."""

    n_expert: int
    n_expert_used: int
    n_ff_exp: int  # 0: read from the expert tensors' shape
    n_ff_shexp: int  # 0: read from the shared expert's tensors, when there is one
    gating: str
    norm_weights: bool
    weights_scale: float

    @classmethod
    def read(cls, f: GGUFFile, norm_default: bool, required: bool = False) -> "MoEConfig | None":
        """None for a dense model (no expert_count, or 0) unless `required`."""
        n_expert = meta_int(f, "expert_count", _REQUIRED if required else 0, hi=MAX_COUNT)
        if n_expert == 0 and not required:
            return None
        n_used = meta_int(f, "expert_used_count", hi=MAX_COUNT)
        if not 0 < n_used <= n_expert:
            raise GGUFError(
                f"{f.path}: {f.architecture}.expert_used_count is {n_used}, but it must lie in 1.."
                f"{f.architecture}.expert_count ({n_expert})."
            )
        func = meta_int(f, "expert_gating_func", 0)
        if func not in (0, *_GATING_FUNCS):
            raise UnsupportedArchitectureError(
                f"{f.path} routes its experts with gating function {func}; edgeinfer supports softmax (1) "
                "and sigmoid (2)."
            )
        if meta_int(f, "expert_group_count", 1) > 1:
            raise UnsupportedArchitectureError(
                f"{f.path} routes its experts by groups (DeepSeek V3's group-limited routing), "
                "which edgeinfer does not support."
            )
        return cls(
            n_expert=n_expert,
            n_expert_used=n_used,
            n_ff_exp=meta_int(f, "expert_feed_forward_length", 0),
            n_ff_shexp=meta_int(f, "expert_shared_feed_forward_length", 0),
            gating=_GATING_FUNCS.get(func, "softmax"),
            norm_weights=meta_bool(f, "expert_weights_norm", norm_default),
            weights_scale=meta_float(f, "expert_weights_scale", 0.0) or 1.0,
        )

    def routing(self) -> Routing:
        return Routing(self.n_expert_used, self.gating, self.norm_weights, self.weights_scale)


@dataclass(frozen=True)
class BaseConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int  # n_embd_head_k
    head_dim_v: int  # n_embd_head_v
    n_ff: int
    rms_eps: float
    n_ctx_train: int
    n_rot: int
    rope_neox: bool
    rope_freq_base: float
    rope_freq_scale: float  # 1 / rope.scaling.factor for linear / YaRN scaling
    rope_scaling: str  # "none", "linear", "yarn"
    rope_n_ctx_orig: int
    yarn_ext_factor: float
    yarn_attn_factor: float
    yarn_beta_fast: float
    yarn_beta_slow: float
    attn_scale: float  # multiplies q.k (kq_scale)
    tied_output: bool  # no output.weight: the output head is token_embd.weight
    final_logit_softcap: float  # 0: off
    moe: MoEConfig | None = None  # a Mixture-of-Experts feed-forward in every block; None: dense

    @staticmethod
    def read_common(f: GGUFFile, rope_neox: bool, per_layer: tuple[str, ...] = (), n_head_kv: int | None = None
                    ) -> dict[str, Any]:  # fmt: skip
        """Every field of BaseConfig from the file's metadata (and tensor shapes where metadata is silent).
        per_layer: the keys among attention.head_count_kv and feed_forward_length that may differ between
        layers (the architecture reads them per layer; here the largest). n_head_kv: the family's own reading
        of attention.head_count_kv (LFM2's differs per layer)."""
        n_embd = meta_int(f, "embedding_length", lo=1)
        n_head = _per_layer_int(f, "attention.head_count", lo=1, hi=MAX_COUNT)
        if n_head_kv is None:
            n_head_kv = _per_layer_int(f, "attention.head_count_kv", n_head, lo=1, hi=MAX_COUNT,
                                       varying="attention.head_count_kv" in per_layer)  # fmt: skip
        head_dim = meta_int(f, "attention.key_length", n_embd // n_head, lo=1)
        if head_dim < 1:
            raise GGUFError(
                f"{f.path}: a head size of 0 ({f.architecture}.embedding_length {n_embd} over "
                f"{n_head} heads); the file is corrupt or forged."
            )
        n_ctx_train = meta_int(f, "context_length", 0, hi=1 << 31)
        if "token_embd.weight" not in f.tensors:
            raise GGUFError(f"{f.path} has no tensor 'token_embd.weight'; the file is incomplete.")
        embd = f.tensors["token_embd.weight"]
        if len(embd.ne) != 2:
            raise GGUFError(
                f"{f.path}: tensor 'token_embd.weight' has shape {list(embd.ne)}, but an embedding is a "
                "2-D table (n_embd, n_vocab); the file is corrupt or forged."
            )
        n_vocab = int(embd.ne[1])

        scaling = meta_str(f, "rope.scaling.type", "linear")
        if scaling not in ("none", "linear", "yarn"):
            raise UnsupportedArchitectureError(
                f"{f.path} uses rope scaling {scaling!r}; edgeinfer supports none, linear and yarn."
            )
        factor = meta_float(f, "rope.scaling.factor", 0.0, lo=0.0) or meta_float(f, "rope.scale_linear", 0.0, lo=0.0)
        freq_scale = 1.0 if factor == 0.0 or scaling == "none" else 1.0 / factor
        # MoE files may leave it out (the experts' own size is expert_feed_forward_length)
        is_moe = meta_int(f, "expert_count", 0, hi=MAX_COUNT) > 0
        return dict(
            arch=f.architecture,
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=meta_int(f, "block_count", lo=1, hi=MAX_COUNT),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            head_dim_v=meta_int(f, "attention.value_length", head_dim, lo=1),
            n_ff=_per_layer_int(f, "feed_forward_length", 0 if is_moe else _REQUIRED,
                                varying="feed_forward_length" in per_layer),
            rms_eps=meta_float(f, "attention.layer_norm_rms_epsilon", lo=0.0, hi=1.0),
            n_ctx_train=n_ctx_train,
            n_rot=meta_int(f, "rope.dimension_count", head_dim),
            rope_neox=rope_neox,
            rope_freq_base=meta_float(f, "rope.freq_base", 10000.0),
            rope_freq_scale=freq_scale,
            rope_scaling=scaling,
            rope_n_ctx_orig=meta_int(f, "rope.scaling.original_context_length", n_ctx_train, hi=1 << 31),
            yarn_ext_factor=meta_float(f, "rope.scaling.yarn_ext_factor", 1.0) if scaling == "yarn" else 0.0,
            yarn_attn_factor=meta_float(f, "rope.scaling.attn_factor", 1.0),
            yarn_beta_fast=meta_float(f, "rope.scaling.yarn_beta_fast", 32.0),
            yarn_beta_slow=meta_float(f, "rope.scaling.yarn_beta_slow", 1.0),
            attn_scale=1.0 / math.sqrt(head_dim),  # llama.cpp reads attention.scale only for granite-like archs
            tied_output="output.weight" not in f.tensors,
            final_logit_softcap=meta_float(f, "final_logit_softcapping", 0.0, lo=0.0),
        )

    def kv_dims(self) -> dict[str, Any]:
        """What a KV cache holds per token: n_layer layers of n_head_kv heads of head_dim (K) and head_dim_v
        (V) values (an architecture whose layers differ gives tuples, one value per cached layer); a family with
        short-convolution layers adds n_conv_layer rows of conv_dim values (LFM2)."""
        return dict(n_layer=self.n_layer, n_head_kv=self.n_head_kv, head_dim=self.head_dim, head_dim_v=self.head_dim_v)

    def rope_params(self, freq_base: float | None = None, freq_scale: float | None = None) -> RopeParams:
        return RopeParams(
            n_rot=self.n_rot,
            freq_base=self.rope_freq_base if freq_base is None else freq_base,
            freq_scale=self.rope_freq_scale if freq_scale is None else freq_scale,
            neox=self.rope_neox,
            ext_factor=self.yarn_ext_factor,
            attn_factor=self.yarn_attn_factor,
            beta_fast=self.yarn_beta_fast,
            beta_slow=self.yarn_beta_slow,
            n_ctx_orig=self.rope_n_ctx_orig,
        )


def read_swa_layers(f: GGUFFile, n_layer: int, n_pattern: int) -> tuple[bool, ...]:
    """Which layers use the sliding window: `{arch}.attention.sliding_window_pattern` as one bool per
    layer, or a period n (layer il is local when il % n < n - 1; 0: all local); else the family's period
    (llama.cpp's load_swa_pattern)."""
    v = meta(f, "attention.sliding_window_pattern", None)
    key = f"{f.architecture}.attention.sliding_window_pattern"
    if isinstance(v, np.ndarray) or isinstance(v, (list, tuple)):
        if isinstance(v, np.ndarray) and v.dtype == np.bool_:  # Gemma 4's converter writes bools
            v = v.astype(np.int8)
        arr = typed.as_num_array(key, np.asarray(v), where=f.path) if isinstance(v, np.ndarray) else np.asarray(v)
        if arr.size < n_layer:
            raise GGUFError(f"{f.path}: {key} has {arr.size} entries for {n_layer} layers; the file is corrupt.")
        return tuple(bool(x) for x in arr[:n_layer])
    if v is not None:
        n_pattern = typed.as_int(key, v, 0, 1 << 16, where=f.path)
    return tuple(n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layer))


@dataclass(frozen=True)
class SlidingWindowConfig(BaseConfig):
    """A family whose layers are local (sliding-window attention) or global as swa_layers says, the local
    ones roping with their own base (Gemma 2, gpt-oss)."""

    n_swa: int = 0  # attention.sliding_window: the local layers' window, in tokens (0: every layer is global)
    swa_layers: tuple[bool, ...] = field(default=())  # per layer: local (True) or global
    rope_freq_base_swa: float = 10000.0

    @staticmethod
    def read_swa(f: GGUFFile, common: dict[str, Any], n_pattern: int, n_swa: Any = _REQUIRED) -> dict[str, Any]:
        """The fields above from the file's metadata (common: read_common's): n_pattern, the family's period
        of local layers (read_swa_layers); n_swa, the window where the file has none (default: it must
        have one); the local layers' base, the global one where the file has none."""
        return dict(
            n_swa=meta_int(f, "attention.sliding_window", n_swa, hi=1 << 31),
            swa_layers=read_swa_layers(f, common["n_layer"], n_pattern),
            rope_freq_base_swa=meta_float(f, "rope.freq_base_swa", common["rope_freq_base"]),
        )

    def is_swa(self, il: int) -> bool:
        """Whether layer il is a local (sliding-window) layer."""
        return self.n_swa > 0 and self.swa_layers[il]

    def rope_params_swa(self) -> RopeParams:
        """The local layers' rope: their own base, the global layers' scaling."""
        return self.rope_params(self.rope_freq_base_swa)


class LayerBackends:
    """The backend a model is built with when its layers run on different backends (GPU offload):
    layer il's weights run on layer_backend(il), the output head (output_norm, output) on
    layer_backend(n_layer), everything else (the token embedding) on `backend`, which this object
    stands for everywhere else (attributes pass through to it). build_model makes one from its
    layer_backend argument; architectures need not know."""

    def __init__(self, backend: Backend, layer_backend: Callable[[int], Backend]):
        self.backend = backend
        self.layer_backend = layer_backend

    def __getattr__(self, name: str):
        if name in ("backend", "layer_backend"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        return f"LayerBackends({self.backend!r})"


_LAYER_PREFIX = re.compile(r"^blk\.(\d+)\.")


class Weights:
    """Typed access to a file's tensors by llama.cpp's names, with shapes checked against the config.

    Shapes are given in ggml order (ne): a linear layer from n_in to n_out is ne == (n_in, n_out).
    Each layer built from a tensor runs on the backend of the tensor's layer (`backend_for`): one
    backend for all, or per layer when `backend` is a LayerBackends.
    """

    def __init__(self, f: GGUFFile, backend: Backend):
        self.f = f
        self._layer_backend = None
        if isinstance(backend, LayerBackends):
            self._layer_backend = backend.layer_backend
            self._n_layer = meta_int(f, "block_count", lo=1, hi=MAX_COUNT)
            backend = backend.backend
        self.backend = backend

    def backend_for(self, name: str) -> Backend:
        """The backend of the layer a tensor belongs to: blk.N.* -> layer N, output* -> the output head
        (layer n_layer), anything else -> the model's backend."""
        if self._layer_backend is None:
            return self.backend
        m = _LAYER_PREFIX.match(name)
        if m:
            return self._layer_backend(int(m.group(1)))
        if name.startswith("output"):
            return self._layer_backend(self._n_layer)
        return self.backend

    def has(self, name: str) -> bool:
        return name in self.f.tensors

    def qtensor(self, name: str, ne: tuple[int, ...]) -> QTensor:
        t = self.f.tensors.get(name)
        if t is None:
            raise GGUFError(
                f"{self.f.path} lacks the tensor {name!r}, which a {self.f.architecture} model needs; "
                "the file is incomplete or not the architecture it claims."
            )
        if tuple(t.ne) != tuple(ne):
            raise GGUFError(
                f"{self.f.path}: tensor {name!r} has shape {tuple(t.ne)} but the metadata implies "
                f"{tuple(ne)} (ggml order); the file is inconsistent."
            )
        return QTensor.from_tensor_info(t)

    def vector(self, name: str, n: int) -> np.ndarray:
        """A small tensor (norm weight, bias) as float32 (n,)."""
        return self.backend_for(name).dequantize(self.qtensor(name, (n,))).reshape(n)

    def matrix(self, name: str, n_cols: int, n_rows: int) -> np.ndarray:
        """A small 2-D tensor of ne (n_cols, n_rows) (per-expert biases) as float32 (n_rows, n_cols)."""
        return self.backend_for(name).dequantize(self.qtensor(name, (n_cols, n_rows))).reshape(n_rows, n_cols)

    def norm(self, name: str, n: int, eps: float) -> RMSNorm:
        return RMSNorm(self.vector(f"{name}.weight", n), eps, self.backend_for(name))

    def linear(self, name: str, n_in: int, n_out: int, bias: bool | None = None) -> Linear:
        """`{name}.weight` (n_in -> n_out); `{name}.bias` required (True), ignored (False) or used if
        present (None)."""
        b = None
        if bias or (bias is None and self.has(f"{name}.bias")):
            b = self.vector(f"{name}.bias", n_out)
        return Linear(self.qtensor(f"{name}.weight", (n_in, n_out)), self.backend_for(name), b)

    def attention(self, p: str, c: BaseConfig, rope: Rope, qkv: tuple[Linear, Linear, Linear] | None = None,
                  qkv_bias: bool | None = None, out_bias: bool | None = None, qk_norm: bool = False,
                  **options: Any) -> Attention:  # fmt: skip
        """Block p's ("blk.3.") attention with the config's heads, head sizes and scale: `attn_q`, `attn_k`,
        `attn_v` (or qkv, the three a family loaded its own way) and `attn_output`, their biases as linear()
        takes them (qkv_bias, out_bias); qk_norm: RMSNorm per head on q and k (`attn_q_norm`, `attn_k_norm`).
        options: Attention's other arguments (n_swa, sinks, norms of another shape)."""
        if qkv is None:
            qkv = (self.linear(p + "attn_q", c.n_embd, c.n_head * c.head_dim, bias=qkv_bias),
                   self.linear(p + "attn_k", c.n_embd, c.n_head_kv * c.head_dim, bias=qkv_bias),
                   self.linear(p + "attn_v", c.n_embd, c.n_head_kv * c.head_dim_v, bias=qkv_bias))  # fmt: skip
        wo = self.linear(p + "attn_output", c.n_head * c.head_dim_v, c.n_embd, bias=out_bias)
        if qk_norm:
            options.update(q_norm=self.norm(p + "attn_q_norm", c.head_dim, c.rms_eps),
                           k_norm=self.norm(p + "attn_k_norm", c.head_dim, c.rms_eps))  # fmt: skip
        return Attention(*qkv, wo, c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, rope, c.attn_scale, **options)

    def gated_mlp(self, p: str, n_embd: int, n_ff: int, act: str) -> GatedMLP:
        """Block p's feed-forward: `ffn_down`(act(`ffn_gate` x) * `ffn_up` x), n_embd -> n_ff -> n_embd."""
        return GatedMLP(self.linear(p + "ffn_gate", n_embd, n_ff), self.linear(p + "ffn_up", n_embd, n_ff),
                        self.linear(p + "ffn_down", n_ff, n_embd), act)  # fmt: skip

    def moe(self, p: str, c: BaseConfig, act: str = "silu", expert_bias: bool = False) -> MoE:
        """The routed experts of block prefix `p` ("blk.3."): router `ffn_gate_inp` (with its bias when
        present), stacked experts `ffn_{gate,up,down}_exps`, and a shared expert `ffn_{gate,up,down}_shexp`
        (scaled by the sigmoid of `ffn_gate_inp_shexp` when the file has it) and DeepSeek V3's selection
        bias `exp_probs_b`, when present; expert_bias: the experts' biases `ffn_{gate,up,down}_exps.bias`
        (ne (n_ff, n_expert) and (n_embd, n_expert), gpt-oss), required."""
        m = c.moe
        assert m is not None
        if not self.has(p + "ffn_gate_exps.weight") and self.has(p + "ffn_gate.0.weight"):
            raise GGUFError(
                f"{self.f.path} stores each expert as its own tensor (ffn_gate.0.weight, ...), an early "
                "Mixtral layout llama.cpp no longer reads; convert the model again with a current "
                "convert_hf_to_gguf.py."
            )
        n_ff = m.n_ff_exp or self._dim(p + "ffn_gate_exps.weight", 1)
        router = self.linear(p + "ffn_gate_inp", c.n_embd, m.n_expert)
        gate = self.qtensor(p + "ffn_gate_exps.weight", (c.n_embd, n_ff, m.n_expert))
        up = self.qtensor(p + "ffn_up_exps.weight", (c.n_embd, n_ff, m.n_expert))
        down = self.qtensor(p + "ffn_down_exps.weight", (n_ff, c.n_embd, m.n_expert))
        shared = shared_gate = None
        if self.has(p + "ffn_up_shexp.weight"):
            n_sh = m.n_ff_shexp or self._dim(p + "ffn_up_shexp.weight", 1)
            shared = GatedMLP(
                self.linear(p + "ffn_gate_shexp", c.n_embd, n_sh),
                self.linear(p + "ffn_up_shexp", c.n_embd, n_sh),
                self.linear(p + "ffn_down_shexp", n_sh, c.n_embd),
                act,
            )
            if self.has(p + "ffn_gate_inp_shexp.weight"):
                shared_gate = Linear(self.qtensor(p + "ffn_gate_inp_shexp.weight", (c.n_embd,)), self.backend_for(p))
        bias = self.vector(p + "exp_probs_b.bias", m.n_expert) if self.has(p + "exp_probs_b.bias") else None
        biases = None
        if expert_bias:
            biases = (self.matrix(p + "ffn_gate_exps.bias", n_ff, m.n_expert),
                      self.matrix(p + "ffn_up_exps.bias", n_ff, m.n_expert),
                      self.matrix(p + "ffn_down_exps.bias", c.n_embd, m.n_expert))  # fmt: skip
        return MoE(router, gate, up, down, m.routing(), act, shared, shared_gate, bias, biases)

    def _dim(self, name: str, axis: int) -> int:
        t = self.f.tensors.get(name)
        if t is None or len(t.ne) <= axis:
            self.qtensor(name, ())  # the missing-tensor error
        return int(t.ne[axis])

    def embedding(self, c: BaseConfig) -> Embedding:
        return Embedding(self.qtensor("token_embd.weight", (c.n_embd, c.n_vocab)), self.backend)

    def output(self, c: BaseConfig) -> Linear:
        """The output head: output.weight, or token_embd.weight when the file ties them."""
        name = "token_embd.weight" if c.tied_output else "output.weight"
        return Linear(self.qtensor(name, (c.n_embd, c.n_vocab)), self.backend_for("output.weight"))


class DecoderModel:
    """The forward skeleton every architecture shares:

        x = token_embd[tokens] * embd_scale
        x = block(x) for each layer          (the block is the architecture's own)
        logits = output(output_norm(x))      (then softcap, if the config has one)

    A block is called as block(x, batch, il, cb) -> x (batch: nn.ForwardBatch: rows, positions, caches).
    """

    arch: ClassVar[str]

    def __init__(
        self,
        config: BaseConfig,
        backend: Backend,
        tok_embd: Embedding,
        blocks: list,
        output_norm: RMSNorm,
        output: Linear,
        embd_scale: float = 1.0,
    ):
        self.config = config
        self.backend = backend
        self.tok_embd = tok_embd
        self.blocks = blocks
        self.output_norm = output_norm
        self.output = output
        self.embd_scale = embd_scale
        self.trace: Trace | None = None  # set to see every named intermediate (debugging)
        self.kv_type = DEFAULT_KV_TYPE  # what its KV caches store K and V in (load(kv_type=...) sets it)

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    def kv_dims(self) -> dict[str, int | str]:
        """What a KV cache for this model must hold per token and layer, and in which format."""
        return {**self.config.kv_dims(), "kv_type": self.kv_type}

    def set_kv_type(self, name: str) -> None:
        """Store K and V of the caches made from now on in `name` (edgeinfer.nn.kv.KV_TYPES);
        EdgeInferError for an unknown name or head sizes the format cannot hold."""
        t = kv_type(name)
        t.check(self.config.head_dim, self.config.head_dim_v)
        self.kv_type = t.name

    def stacked_sources(self) -> list[str]:
        """Names of the file's weights that were copied into stacked matmuls at load (Q/K/V, gate/up)."""
        names = []
        for block in self.blocks:
            for part in vars(block).values():
                names += getattr(part, "stacked_sources", lambda: [])()
        return names

    def prepare_weights(self, release: Callable[[list[str]], object] | None = None) -> list[str]:
        """Hand every weight a matmul reads to its backend's preferred layout (the native backend
        repacks rows for its SIMD kernels; others keep the file's). Weights copied into a stack are
        left alone: their stack is prepared instead. Returns the names of the file's tensors whose
        bytes now live in a prepared copy; release(names), when given, is called with each as soon as
        it is copied (GGUFFile.release_pages: the file's pages do not stay beside all the copies)."""
        stacked = set(self.stacked_sources())
        parts = [part for block in self.blocks for part in vars(block).values()]
        linears = [p for part in parts for p in getattr(part, "__dict__", {}).values() if isinstance(p, Linear)]
        replaced = []
        for lin in [*linears, self.output]:
            if lin is None or lin.weight.name in stacked:
                continue
            before = lin.weight
            lin.prepare()
            if lin.weight is not before:
                replaced.append(before.name)
                if release is not None:
                    release([before.name])
        return replaced

    def forward_many(self, tokens: list, caches: list, all_logits=False) -> list[np.ndarray]:
        """Several sequences in one pass (continuous batching): tokens[i] (n_i,) follow caches[i]'s
        n_past tokens. Every weight is read once for all of them; attention runs per sequence. Returns
        per sequence its logits: (n_i, n_vocab), or (1, n_vocab) for its last token when all_logits is
        False; all_logits may also be one bool per sequence (a speculative sequence verifying drafts needs
        every row, the others their last). ContextFullError (before any work) when a cache cannot take
        its tokens."""
        tokens = [self._check_tokens(t) for t in tokens]
        return self.run(ForwardBatch.plan(tokens, caches), all_logits)

    def run(self, batch: ForwardBatch, all_logits=False) -> list[np.ndarray]:
        """One forward pass over a ForwardBatch (cells already claimed: ForwardBatch.plan); commits the
        caches after it. Returns per sequence its logits, as forward_many."""
        n = len(batch.seqs)
        every = [bool(all_logits)] * n if isinstance(all_logits, (bool, int)) else [bool(a) for a in all_logits]
        if len(every) != n:
            raise EdgeInferError("forward_many(): all_logits needs one flag per sequence.")
        return self._per_sequence(batch, self._blocks(batch), every, self._logits)

    @staticmethod
    def _per_sequence(batch: ForwardBatch, x: np.ndarray, every: list[bool], head) -> list[np.ndarray]:
        """head() over the rows wanted (each sequence's every row, or its last when every[i] is False),
        split back per sequence."""
        rows = [r for s, e in zip(batch.seqs, every) for r in (range(s.r0, s.r1) if e else (s.r1 - 1,))]
        y = head(x if len(rows) == x.shape[0] else x[rows])
        out, i = [], 0
        for s, e in zip(batch.seqs, every):
            k = s.r1 - s.r0 if e else 1
            out.append(y[i : i + k])
            i += k
        return out

    def _blocks(self, batch: ForwardBatch) -> np.ndarray:
        """Embed the batch's tokens and run every block over them; commits the caches. The hidden states
        (n_rows, n_embd) before the output norm."""
        x = self._embed(batch.tokens)
        for il, block in enumerate(self.blocks):
            cb = self._cb(il)
            x = block(x, batch, il, cb)
            if cb is not None:
                cb("l_out", x)
        batch.commit()
        return x

    def hidden_states(self, batch: ForwardBatch, rows: list | None = None) -> list[np.ndarray]:
        """One forward pass over a ForwardBatch without the output head (embeddings): per sequence its
        last hidden states after the output norm, float32 (n_i, n_embd) (llama.cpp's t_embd,
        "result_norm"). rows: per sequence "all" (every row, default) or "last" (its last row only).
        Commits the caches after it, as run()."""
        every = [r != "last" for r in rows] if rows is not None else [True] * len(batch.seqs)
        if len(every) != len(batch.seqs):
            raise EdgeInferError("hidden_states(): rows needs one entry per sequence.")
        return self._per_sequence(batch, self._blocks(batch), every, self.output_norm)

    def moe_layers(self) -> list:
        """The blocks' MoE feed-forwards (nn.moe.MoE), in layer order; empty for a dense model."""
        return [b.ffn for b in self.blocks if isinstance(getattr(b, "ffn", None), MoE)]

    def expert_counts(self) -> np.ndarray | None:
        """How often each expert was chosen since load (or the last reset), int64 (n_moe_layer,
        n_expert); None for a dense model."""
        layers = self.moe_layers()
        return np.stack([m.counts for m in layers]) if layers else None

    def reset_expert_counts(self) -> None:
        for m in self.moe_layers():
            m.reset_counts()

    def _cb(self, il: int) -> Callable[[str, np.ndarray], None] | None:
        trace = self.trace
        if trace is None:
            return None
        return lambda name, x: trace(name, il, x)

    def _check_tokens(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
            raise EdgeInferError(
                f"forward() takes a non-empty 1-D array of integer token ids, not {tokens.dtype} {tokens.shape}."
            )
        if tokens.min() < 0 or tokens.max() >= self.n_vocab:
            raise EdgeInferError(
                f"Token ids must lie in 0..{self.n_vocab - 1} (the model's vocabulary); got "
                f"{int(tokens.min())}..{int(tokens.max())}."
            )
        return tokens.astype(np.int32, copy=False)

    def forward(
        self,
        tokens: np.ndarray,
        cache: KVCacheLike,
        positions: np.ndarray | None = None,
        all_logits: bool = True,
    ) -> np.ndarray:
        """Run tokens (n,) through the model after the cache's n_past tokens.

        positions: int (n,), default n_past, n_past+1, ... Returns float32 logits (n, n_vocab), or
        (1, n_vocab) for the last token only when all_logits is False. ContextFullError (before any
        work) when the cache cannot take n more tokens.
        """
        tokens = self._check_tokens(tokens)
        batch = ForwardBatch.plan([tokens], [cache], None if positions is None else [positions])
        return self.run(batch, all_logits)[0]

    def _embed(self, tokens: np.ndarray) -> np.ndarray:
        x = self.tok_embd(tokens)
        if self.embd_scale != 1.0:
            x *= np.float32(self.embd_scale)
        return x

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """The last hidden states (n_out, n_embd) -> logits (n_out, n_vocab): output norm, head, softcap."""
        x = self.output_norm(x)
        logits = self.output(x)
        cap = self.config.final_logit_softcap
        if cap:
            logits = np.tanh(logits / np.float32(cap)) * np.float32(cap)
        if self.trace is not None:
            self.trace("result_norm", -1, x)
            self.trace("result_output", -1, logits)
        return logits


class SlidingWindowModel(DecoderModel):
    """A family whose local (sliding-window) layers, config.is_swa(il), rope with parameters of their own,
    config.rope_params_swa(): from_gguf loads each block, load_block(w, c, il, rope), with its kind's rope.
    scale_embd: the token embedding times sqrt(n_embd) (Gemma)."""

    config_class: ClassVar[type]
    scale_embd: ClassVar[bool] = False

    @classmethod
    def from_gguf(cls, f: GGUFFile, backend: Backend) -> "SlidingWindowModel":
        c = cls.config_class.from_gguf(f)
        w = Weights(f, backend)
        rope_global, rope_local = Rope(c.rope_params()), Rope(c.rope_params_swa())
        blocks = [cls.load_block(w, c, il, rope_local if c.is_swa(il) else rope_global) for il in range(c.n_layer)]
        return cls(c, backend, w.embedding(c), blocks, w.norm("output_norm", c.n_embd, c.rms_eps), w.output(c),
                   embd_scale=math.sqrt(c.n_embd) if cls.scale_embd else 1.0)  # fmt: skip
