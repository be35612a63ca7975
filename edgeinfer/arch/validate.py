"""Semantic checks of a model file, run at load before any layer or kernel sees its numbers.

The GGUF reader checks that a file is well formed (every count, length and offset inside the file);
`Config.from_gguf` checks each hyper-parameter's type and range (edgeinfer.gguf.typed). This module
checks that they agree with each other and with the architecture: heads divide evenly into KV heads,
rope rotates at most a whole head, a YaRN ramp has a context to ramp over, the layers the metadata
claims exist in the file, and the vocabulary has an embedding row for every token. The kernels
trust these facts (a rope of more dimensions than the head writes past the head), so a file that
breaks one is refused here with a GGUFError naming the keys, never a crash later.
"""

from __future__ import annotations

import math
import re

from ..errors import GGUFError
from ..gguf import GGUFFile
from .base import BaseConfig

_LAYER = re.compile(r"^blk\.(\d+)\.")


def _fail(f: GGUFFile, what: str) -> GGUFError:
    return GGUFError(f"{f.path}: {what}; the file is corrupt or forged, and edgeinfer will not run it.")


def check_config(c: BaseConfig, f: GGUFFile) -> BaseConfig:
    """`c` itself when its hyper-parameters agree with each other and with the file; GGUFError if not."""
    a = c.arch
    if c.n_embd < 1 or c.n_layer < 1 or c.n_head < 1 or c.n_head_kv < 1 or c.head_dim < 1 or c.head_dim_v < 1:
        raise _fail(f, f"a size is below 1 (n_embd {c.n_embd}, block_count {c.n_layer}, heads {c.n_head}, "
                       f"KV heads {c.n_head_kv}, head size {c.head_dim}/{c.head_dim_v})")  # fmt: skip
    if c.n_head % c.n_head_kv:
        raise _fail(f, f"{a}.attention.head_count ({c.n_head}) is not a multiple of "
                       f"{a}.attention.head_count_kv ({c.n_head_kv})")  # fmt: skip
    if c.n_vocab < 1:
        raise _fail(f, "the embedding has no rows")
    if c.n_rot < 2 or c.n_rot % 2 or c.n_rot > c.head_dim:
        raise _fail(f, f"{a}.rope.dimension_count is {c.n_rot}, but rope rotates an even number of values "
                       f"from 2 up to the head size ({c.head_dim})")  # fmt: skip
    for name, v in (("rope.freq_base", c.rope_freq_base), ("rope frequency scale", c.rope_freq_scale),
                    ("attention.layer_norm_rms_epsilon", c.rms_eps), ("rope.scaling.attn_factor", c.yarn_attn_factor),
                    ("rope.scaling.yarn_ext_factor", c.yarn_ext_factor), ("final_logit_softcapping", c.final_logit_softcap),
                    ("attention scale", c.attn_scale)):  # fmt: skip
        if not math.isfinite(v):
            raise _fail(f, f"{a}.{name} is {v}, not a finite number")
    if c.rope_freq_base <= 0 or c.rope_freq_scale <= 0:
        raise _fail(f, f"{a}.rope.freq_base ({c.rope_freq_base}) and the rope scale ({c.rope_freq_scale}) "
                       "must be positive")  # fmt: skip
    if c.rms_eps < 0 or c.final_logit_softcap < 0:
        raise _fail(f, f"{a}.attention.layer_norm_rms_epsilon ({c.rms_eps}) and {a}.final_logit_softcapping "
                       f"({c.final_logit_softcap}) must not be negative")  # fmt: skip
    if c.yarn_ext_factor != 0.0:
        if c.rope_n_ctx_orig < 1:
            raise _fail(f, f"YaRN rope scaling needs {a}.rope.scaling.original_context_length (or "
                           f"{a}.context_length) of at least 1, not {c.rope_n_ctx_orig}")  # fmt: skip
        if c.rope_freq_base <= 1.0:
            raise _fail(f, f"YaRN rope scaling needs {a}.rope.freq_base above 1, not {c.rope_freq_base}")
        if not (c.yarn_beta_fast > 0 and c.yarn_beta_slow > 0):
            raise _fail(f, f"YaRN's beta_fast ({c.yarn_beta_fast}) and beta_slow ({c.yarn_beta_slow}) must be "
                           "positive")  # fmt: skip
    if c.moe is None and c.n_ff < 1:
        raise _fail(f, f"{a}.feed_forward_length is {c.n_ff}; a dense model needs at least 1")
    m = c.moe
    if m is not None:
        if not 0 < m.n_expert_used <= m.n_expert:
            raise _fail(f, f"{a}.expert_used_count ({m.n_expert_used}) must lie in 1..{a}.expert_count ({m.n_expert})")
        if not math.isfinite(m.weights_scale):
            raise _fail(f, f"{a}.expert_weights_scale is {m.weights_scale}")
    n_swa = getattr(c, "n_swa", 0)
    if n_swa < 0:
        raise _fail(f, f"{a}.attention.sliding_window is {n_swa}")

    # the layers the metadata claims must be in the file (no model of 0 layers, no 65,536 empty ones)
    layers = {int(m_.group(1)) for name in f.tensors if (m_ := _LAYER.match(name))}
    if c.n_layer > len(layers) or (layers and max(layers) < c.n_layer - 1):
        raise _fail(f, f"{a}.block_count says {c.n_layer} layers, but the file holds tensors for "
                       f"{len(layers)}")  # fmt: skip

    # every token of the vocabulary needs an embedding row (the sampler and the lookup index by token id)
    tokens = f.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, (list, tuple)) and len(tokens) > c.n_vocab:
        raise _fail(f, f"the vocabulary has {len(tokens)} tokens but token_embd.weight has only {c.n_vocab} rows")
    return c


__all__ = ["check_config"]
