"""Re-quantize a GGUF model as llama.cpp's `llama-quantize --pure` does, with edgeinfer's own quantizers.

    requantize_gguf("smollm2-135m-q4_1.gguf", "smollm2-q4_k.gguf", GGMLQuantizationType.Q4_K)

llama.cpp's `llama_model_quantize` (src/llama-quant.cpp) with `pure = true` and no importance matrix
gives every weight it may quantize one target type, except where the target's blocks do not divide a
row: then it falls back to a type with blocks of 32 (`tensor_type_fallback`: Q4_K -> Q5_0 for SmolLM2's
rows of 576). Everything else (norms, other 1-D tensors) is copied unchanged. Here each weight to
quantize is dequantized to float32 with edgeinfer's numpy references and quantized with its ports of
ggml's reference quantizers, so the result equals, byte for byte in every tensor, what llama.cpp
writes when it quantizes the float32 dequantization of the source (`dequantize_gguf`).
tests/test_requant.py checks that on SmolLM2 for eight target types.
"""

from __future__ import annotations

import os
import re
from typing import Callable

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, GGUFValueType, Keys, LlamaFileType
from gguf.constants import GGMLQuantizationType as T

from .. import quant
from ..gguf import GGUFFile
from ..progress import Progress

# llama_ftype recorded in general.file_type by a pure re-quantization to each type (for the K-quants,
# the _M mixes: with pure = true the S, M and L mixes give the same tensors)
FILE_TYPES: dict[T, LlamaFileType] = {
    T.F32: LlamaFileType.ALL_F32,
    T.F16: LlamaFileType.MOSTLY_F16,
    T.BF16: LlamaFileType.MOSTLY_BF16,
    T.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    T.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    T.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    T.Q5_1: LlamaFileType.MOSTLY_Q5_1,
    T.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    T.Q2_K: LlamaFileType.MOSTLY_Q2_K,
    T.Q3_K: LlamaFileType.MOSTLY_Q3_K_M,
    T.Q4_K: LlamaFileType.MOSTLY_Q4_K_M,
    T.Q5_K: LlamaFileType.MOSTLY_Q5_K_M,
    T.Q6_K: LlamaFileType.MOSTLY_Q6_K,
    T.IQ4_NL: LlamaFileType.MOSTLY_IQ4_NL,
    T.IQ4_XS: LlamaFileType.MOSTLY_IQ4_XS,
}

# tensor_type_fallback: the type for rows that the target's blocks do not divide
FALLBACK_TYPES: dict[T, T] = {
    T.IQ4_XS: T.IQ4_NL,
    T.Q2_K: T.Q4_0,
    T.Q3_K: T.Q4_0,
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
}

# tensor_allows_quantization: weights llama.cpp never quantizes, by a part of their name
_KEPT_NAME_PARTS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)  # fmt: skip
_KEPT_NAMES = ("position_embd.weight", "token_types.weight")

_ARRAY_ITEM_TYPES: dict[np.dtype, GGUFValueType] = {
    np.dtype(np.uint8): GGUFValueType.UINT8,
    np.dtype(np.int8): GGUFValueType.INT8,
    np.dtype("<u2"): GGUFValueType.UINT16,
    np.dtype("<i2"): GGUFValueType.INT16,
    np.dtype("<u4"): GGUFValueType.UINT32,
    np.dtype("<i4"): GGUFValueType.INT32,
    np.dtype("<f4"): GGUFValueType.FLOAT32,
    np.dtype(np.bool_): GGUFValueType.BOOL,
    np.dtype("<u8"): GGUFValueType.UINT64,
    np.dtype("<i8"): GGUFValueType.INT64,
    np.dtype("<f8"): GGUFValueType.FLOAT64,
}


def ggml_n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: dimensions up to the last one longer than 1."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def tensor_allows_quantization(name: str, ne: tuple[int, ...]) -> bool:
    """llama.cpp's tensor_allows_quantization with the default parameters."""
    if ggml_n_dims(ne) < 2 or not name.endswith("weight") or name in _KEPT_NAMES:
        return False
    return not any(part in name for part in _KEPT_NAME_PARTS)


def fallback_type(name: str, n_cols: int, target: T) -> T:
    """tensor_type_fallback: target, or the type llama.cpp uses for rows target's blocks do not divide."""
    if n_cols % GGML_QUANT_SIZES[target][0] == 0:
        return target
    if target not in FALLBACK_TYPES:
        raise ValueError(
            f"Tensor {name!r} has rows of {n_cols} values, which {target.name} blocks do not divide, and "
            f"llama.cpp defines no fallback type for {target.name}; choose another type."
        )
    new = FALLBACK_TYPES[target]
    return new if n_cols % GGML_QUANT_SIZES[new][0] == 0 else T.F16


def tensor_types(f: GGUFFile, ggml_type: T | int) -> dict[str, T | None]:
    """The type llama.cpp's pure re-quantization to ggml_type gives each tensor of f; None where it
    copies the tensor unchanged."""
    target = T(ggml_type)
    is_quantized = GGML_QUANT_SIZES[target][0] > 1
    types: dict[str, T | None] = {}
    for t in f.tensors.values():
        if not tensor_allows_quantization(t.name, t.ne):
            types[t.name] = None
        else:
            types[t.name] = fallback_type(t.name, t.ne[0], target) if is_quantized else target
    return types


def _layer_then_name(name: str) -> tuple[int, str]:
    """llama.cpp's weight_name_comparer: by layer number (-1 outside blk.N.), then by name."""
    m = re.match(r"blk\.(-?\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def llamacpp_tensor_order(names) -> list[str]:
    """The order llama.cpp's quantizer writes tensors in (its weights map is sorted, not file-ordered)."""
    return sorted(names, key=_layer_then_name)


def requantize_gguf(
    src_path: str | os.PathLike, dst_path: str | os.PathLike, ggml_type: T | int, progress: bool = True
) -> dict[str, T]:
    """Write src_path re-quantized to ggml_type as llama.cpp's `llama_model_quantize` with `pure = true`
    does (see the module docstring). Returns each tensor's type in the new file."""
    target = T(ggml_type)
    if target not in FILE_TYPES or not quant.get_format(target).can_quantize:
        names = ", ".join(t.name for t in FILE_TYPES if quant.get_format(t).can_quantize)
        raise ValueError(f"Re-quantizing to {target.name} is not supported; choose one of {names}.")
    with GGUFFile(src_path) as src:
        plan = tensor_types(src, target)

        def convert(t) -> np.ndarray:
            new = plan[t.name]
            if new is None:
                return t.data
            x = quant.dequantize(t.data, t.ggml_type, t.shape, t.name)
            return quant.quantize(x, new)

        types = {name: plan[name] or t.ggml_type for name, t in src.tensors.items()}
        label = f"re-quantizing to {target.name}"
        _write_gguf(dst_path, src, types, convert, FILE_TYPES[target], label, progress)
    return types


def dequantize_gguf(src_path: str | os.PathLike, dst_path: str | os.PathLike, progress: bool = True) -> None:
    """Write src_path with every tensor as float32 (metadata copied, general.file_type ALL_F32): the file
    llama.cpp's quantizer starts from in tests/fixtures/make_requant_fixture.py."""
    with GGUFFile(src_path) as src:
        types = {name: T.F32 for name in src.tensors}

        def convert(t) -> np.ndarray:
            return quant.dequantize(t.data, t.ggml_type, t.shape, t.name)

        _write_gguf(dst_path, src, types, convert, LlamaFileType.ALL_F32, "dequantizing to F32", progress)


# -- writing ----------------------------------------------------------------------------------------------


def _copy_metadata(src: GGUFFile, w: GGUFWriter, file_type: LlamaFileType) -> None:
    """Every key of src in its order, then general.quantization_version and general.file_type last,
    as llama.cpp's gguf_set_val_u32 (remove, then append) leaves them."""
    w.kv_data[0].clear()  # GGUFWriter put general.architecture first; src's own order rules
    for key, value in src.metadata.items():
        vtype = src.metadata_types[key]
        if vtype == GGUFValueType.ARRAY:
            value, sub_type = _array_value(key, value)
            w.add_key_value(key, value, vtype, sub_type)
        else:
            w.add_key_value(key, value, vtype)
    for key, value in ((Keys.General.QUANTIZATION_VERSION, 2), (Keys.General.FILE_TYPE, int(file_type))):
        w.kv_data[0].pop(key, None)
        w.add_key_value(key, value, GGUFValueType.UINT32)


def _array_value(key: str, value) -> tuple[list, GGUFValueType]:
    if isinstance(value, np.ndarray):
        return value.tolist(), _ARRAY_ITEM_TYPES[value.dtype]
    if value and all(isinstance(v, str) for v in value):
        return list(value), GGUFValueType.STRING
    raise ValueError(
        f"Metadata key {key!r} holds an empty or nested array, which gguf.GGUFWriter cannot write."
    )


def _write_gguf(
    dst_path: str | os.PathLike,
    src: GGUFFile,
    types: dict[str, T],
    convert: Callable,
    file_type: LlamaFileType,
    label: str,
    progress: bool,
) -> None:
    """Write src's metadata and its tensors, each as convert(tensor) gives its raw bytes (of types[name]),
    one at a time, in llama.cpp's order."""
    order = llamacpp_tensor_order(src.tensors)
    w = GGUFWriter(os.fspath(dst_path), arch=src.architecture or "")
    w.data_alignment = src.alignment
    _copy_metadata(src, w, file_type)
    for name in order:
        t = src.tensors[name]
        n_bytes = t.n_elements // GGML_QUANT_SIZES[types[name]][0] * GGML_QUANT_SIZES[types[name]][1]
        byte_shape = (*t.shape[:-1], n_bytes // max(1, t.n_elements // t.ne[0]))
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n_bytes, raw_dtype=types[name])
    total = sum(t.n_bytes for t in src.tensors.values())
    bar = Progress(f"{label}: {os.fspath(dst_path)}", total, enabled=progress)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name in order:
            t = src.tensors[name]
            raw = np.ascontiguousarray(convert(t)).reshape(-1).view(np.uint8)
            w.write_tensor_data(raw)
            bar.update(t.n_bytes)  # of the source
    finally:
        w.close()
    bar.close()
