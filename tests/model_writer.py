"""Test helpers: what every writer of tiny random GGUF models in tests/ shares (reference_model,
reference_moe, arch_models, lowbit_models, gemma4_models, gptoss_models, lfm2_models).

`ModelWriter(path, arch, wtype, seed)`: a gguf-py GGUFWriter and the one random generator every tensor
is drawn from, in the order the tensors are added; `matrix` and `vector` add random weights, matrices in
the model's weight type (F32, F16, a legacy block format quantized with edgeinfer.quant's reference
quantizers, or a k-quant as random blocks with sensible scales: `add_matrix`); `placeholder_vocab` adds
a gpt2-style vocabulary of n_vocab tokens (token i is "<i>"), enough for llama.cpp to load a file whose
tests feed token ids; `write()` writes the file. The seed, the shapes and the order of the calls fix a
model's bytes: tests/fixtures store the sha256 of the files llama.cpp ran.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

from edgeinfer import quant

K_QUANTS = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K}
# formats without a quantizer here: every byte pattern is a valid block, so a weight is random codes
LOWBIT_TYPES = {T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.TQ1_0, T.TQ2_0, T.MXFP4}
# dmin / d that centres x = d * sc * q - dmin * m (q, sc, m uniform random) on zero
_KQUANT_DMIN_RATIO = {T.Q2_K: 1.5, T.Q4_K: 7.5, T.Q5_K: 15.5}


def random_kquant(rows: int, cols: int, qtype: T, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random k-quant blocks whose values have standard deviation ~std: random bytes, then the f16
    scale fields (d, dmin) set so. Returns raw uint8 (rows, row_bytes)."""
    fmt = quant.get_format(qtype)
    n_blocks = rows * cols // fmt.block_size
    raw = rng.integers(0, 256, size=n_blocks * fmt.type_size, dtype=np.uint8)
    blocks = raw.view(fmt.block_dtype)
    has_dmin = "dmin" in fmt.block_dtype.names
    d = np.abs(rng.normal(1.0, 0.2, n_blocks))

    def set_scales(d: np.ndarray) -> None:
        blocks["d"] = d.astype(np.float16)
        if has_dmin:
            blocks["dmin"] = (d * _KQUANT_DMIN_RATIO[qtype]).astype(np.float16)

    set_scales(d)
    values = gguf.quants.dequantize(raw.reshape(rows, -1), qtype)
    set_scales(d * std / max(float(values.std()), 1e-12))
    return raw.reshape(rows, -1)


def _set_lowbit_scale(b: np.ndarray, ggml_type: T, d: np.ndarray) -> None:
    """Set every block's super-block scale to d (fp16), or for MXFP4 the exponent nearest d."""
    if ggml_type == T.MXFP4:
        b["e"] = np.clip(np.round(np.log2(d)) + 128, 1, 254).astype(np.uint8)
    elif ggml_type == T.IQ1_M:
        h = d.astype(np.float16).view(np.uint16)
        for k in range(4):
            b["scales"][:, k] = (b["scales"][:, k] & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12)
    else:
        b["d"] = d.astype(np.float16)


def random_lowbit(rng: np.random.Generator, ggml_type: T, n_out: int, n_in: int, std: float) -> np.ndarray:
    """Raw blocks (n_out, row_bytes) of a low-bit format (IQ2_XXS .. MXFP4: every byte pattern is a valid
    block) of random codes, scales drawn around the value giving `std`."""
    fmt = quant.get_format(ggml_type)
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    n_blocks = n_out * n_in // block_size
    raw = rng.integers(0, 256, n_blocks * type_size, dtype=np.uint8)
    b = raw.view(fmt.block_dtype)
    _set_lowbit_scale(b, ggml_type, np.ones(n_blocks, np.float32))
    unit = float(np.sqrt(np.mean(fmt.dequantize(raw) ** 2)))  # the spread at scale 1
    _set_lowbit_scale(b, ggml_type, (std / unit) * np.exp(rng.normal(0.0, 0.2, n_blocks)).astype(np.float32))
    return raw.reshape(n_out, -1)


def add_matrix(w: gguf.GGUFWriter, name: str, x: np.ndarray, qtype: T, rng: np.random.Generator) -> None:
    """x: float32 (n_out, n_in), numpy order."""
    if qtype == T.F32:
        w.add_tensor(name, x.astype(np.float32))
    elif qtype == T.F16:
        w.add_tensor(name, x.astype(np.float16))
    elif qtype in K_QUANTS:
        w.add_tensor(name, random_kquant(*x.shape, qtype, float(x.std()), rng), raw_dtype=qtype)
    else:
        w.add_tensor(name, quant.quantize(x, qtype), raw_dtype=qtype)


def add_experts(w: gguf.GGUFWriter, name: str, x: np.ndarray, qtype: T) -> None:
    """x: float32 (n_expert, n_out, n_in), numpy order; ggml ne = (n_in, n_out, n_expert)."""
    n_expert, rows, cols = x.shape
    if qtype == T.F32:
        w.add_tensor(name, x.astype(np.float32))
    elif qtype == T.F16:
        w.add_tensor(name, x.astype(np.float16))
    else:
        raw = quant.quantize(x.reshape(n_expert * rows, cols), qtype)
        w.add_tensor(name, raw.reshape(n_expert, rows, raw.shape[-1]), raw_dtype=qtype)


def add_placeholder_vocab(w: gguf.GGUFWriter, n_vocab: int, pre: str = "default", bos: int = 1,
                          eos: int = 2) -> None:  # fmt: skip
    """A gpt2-style vocabulary of n_vocab tokens "<i>" with one merge, under the pre-tokenizer name `pre`."""
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", pre)
    w.add_array("tokenizer.ggml.tokens", [f"<{i}>" for i in range(n_vocab)])
    w.add_array("tokenizer.ggml.token_type", [1] * n_vocab)
    w.add_array("tokenizer.ggml.merges", ["< 1"])
    w.add_uint32("tokenizer.ggml.bos_token_id", bos)
    w.add_uint32("tokenizer.ggml.eos_token_id", eos)


def assert_as_llamacpp_ran(paths: dict[str, Path], fixture, script: str, what: str = "tiny model") -> None:
    """Each file written (paths: name -> file) is the one llama.cpp ran: its sha256 is the fixture's
    {name}.sha256, else tests/fixtures/`script` must be run again."""
    for name, path in paths.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fixture[f"{name}.sha256"]), (
            f"the {what} {name} is no longer the one llama.cpp ran: re-run tests/fixtures/{script}"
        )


class ModelWriter:
    """One tiny model being written: metadata (through `writer`, a gguf.GGUFWriter) first, then tensors
    drawn from `rng` in the order they are added; `write()` writes the file and returns its path."""

    def __init__(self, path: str | Path, arch: str, wtype: T, seed: int):
        self.path = Path(path)
        self.rng = np.random.default_rng(seed)
        self.wtype = wtype  # the type of matrix()'s weights
        self.writer = gguf.GGUFWriter(str(self.path), arch)

    def placeholder_vocab(self, n_vocab: int, pre: str = "default", bos: int = 1, eos: int = 2) -> None:
        add_placeholder_vocab(self.writer, n_vocab, pre, bos, eos)

    def normal(self, shape: tuple[int, ...], std: float | None = None) -> np.ndarray:
        """float32 weights of mean 0 and standard deviation std (default 1/sqrt(n_in), the last axis)."""
        std = 1.0 / math.sqrt(shape[-1]) if std is None else std
        return self.rng.normal(0.0, std, shape).astype(np.float32)

    def matrix(self, name: str, n_out: int, n_in: int, std: float | None = None) -> None:
        """A random (n_out, n_in) weight in the model's type, of standard deviation std (default 1/sqrt(n_in));
        in a low-bit type, random codes with set scales (random_lowbit: nothing else is drawn)."""
        std = 1.0 / math.sqrt(n_in) if std is None else std
        if self.wtype in LOWBIT_TYPES:
            raw = random_lowbit(self.rng, self.wtype, n_out, n_in, std)
            self.writer.add_tensor(name, raw, raw_dtype=self.wtype)
        else:
            add_matrix(self.writer, name, self.normal((n_out, n_in), std), self.wtype, self.rng)

    def experts(self, name: str, n_expert: int, n_out: int, n_in: int, std: float, wtype: T) -> None:
        """n_expert random (n_out, n_in) weights in wtype, stacked (ne (n_in, n_out, n_expert))."""
        add_experts(self.writer, name, self.normal((n_expert, n_out, n_in), std), wtype)

    def vector(self, name: str, shape: int | tuple[int, ...], mean: float, std: float) -> None:
        """Random float32 values (a norm's weight, a bias) of the given mean and standard deviation."""
        self.writer.add_tensor(name, self.rng.normal(mean, std, shape).astype(np.float32))

    def write(self) -> Path:
        w = self.writer
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return self.path
