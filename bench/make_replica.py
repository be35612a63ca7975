"""A random-weight replica of a real model: the same architecture, metadata, tensor names, shapes and
block types, random blocks with sensible scales, and a placeholder vocabulary of the same size (token i
is "<i>"). Speed does not depend on weight values (DESIGN.md), so a replica is a fair speed test where
the real file cannot be brought (the GPU machine takes 64 MiB of files per call; the real models are 98
and 253 MB), and two backends must agree on it as on any model.

    python bench/make_replica.py --spec-from real.gguf > bench/shapes/NAME.json    # here, once
    python bench/make_replica.py bench/shapes/NAME.json out.gguf [--seed 0]        # anywhere

A tensor with "values" in the spec is written with those values (Llama 3's rope_freqs.weight); the
real-size shapes of bench/shapes/ (Llama-3.2, Qwen3) come from bench/model_shapes.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeinfer.quant import dequantize, get_format  # noqa: E402

# min / d ratios that centre the values on zero (q uniform random): Q4_1 / Q5_1 x = d q + m,
# k-quants x = d sc q - dmin m
_MIN_RATIO = {T.Q4_1: -7.5, T.Q5_1: -15.5, T.Q2_K: 1.5, T.Q4_K: 7.5, T.Q5_K: 15.5}


def spec_from(path: str) -> dict:
    """The shape of a GGUF file: metadata (without the tokenizer's) and each tensor's name, type, ne."""
    from edgeinfer.gguf import GGUFFile

    f = GGUFFile(path)
    meta = {}
    for k, v in f.metadata.items():
        if k.startswith("tokenizer."):
            continue
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, (np.integer, np.floating)):
            v = v.item()
        meta[k] = v
    tensors = [{"name": n, "type": t.type_name, "ne": list(t.ne)} for n, t in f.tensors.items()]
    n_vocab = int(f.tensors["token_embd.weight"].ne[1])
    return {"source": Path(path).name, "n_vocab": n_vocab, "metadata": meta, "tensors": tensors}


def random_blocks(qtype: T, rows: int, cols: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """raw uint8 (rows, row_bytes): random quantized blocks whose values have standard deviation ~std."""
    fmt = get_format(qtype)
    n_blocks = rows * cols // fmt.block_size
    raw = rng.integers(0, 256, size=n_blocks * fmt.type_size, dtype=np.uint8)
    blocks = raw.view(fmt.block_dtype)
    names = fmt.block_dtype.names

    def set_scale(d: float) -> None:
        blocks["d"] = np.float16(d)
        for field in ("m", "dmin"):
            if field in names:
                blocks[field] = np.float16(d * _MIN_RATIO[qtype])

    set_scale(1.0)
    sample_rows = min(rows, 64)
    values = dequantize(raw.reshape(rows, -1)[:sample_rows], qtype, (sample_rows, cols))
    set_scale(std / max(float(values.std()), 1e-12))
    return raw.reshape(rows, -1)


def _tensor_data(t: dict, arch: str, rng: np.random.Generator) -> tuple[np.ndarray, T | None]:
    """One tensor's data: (array, raw_dtype for GGUFWriter). "values" in the spec are written as given
    (Llama 3's rope_freqs.weight); otherwise random, drawn in spec order."""
    name, qtype, ne = t["name"], T[t["type"]], t["ne"]
    if "values" in t:
        dtype = {T.F32: np.float32, T.F16: np.float16}[qtype]
        return np.asarray(t["values"], dtype=dtype).reshape(*reversed(ne)), None
    if len(ne) == 1:  # norm weights and biases
        mean = 0.0 if name.endswith(".bias") else 1.0
        return rng.normal(mean, 0.1, ne[0]).astype(np.float32), None
    cols, rows = ne[0], int(np.prod(ne[1:]))
    if name == "token_embd.weight":
        std = 0.08 if arch == "gemma3" else 1.0  # gemma3 scales it by sqrt(n_embd)
    else:
        std = 1.0 / math.sqrt(cols)
    if qtype in (T.F32, T.F16):
        x = rng.normal(0.0, std, (rows, cols)).astype(np.float32 if qtype == T.F32 else np.float16)
        return x.reshape(*reversed(ne)), None
    raw = random_blocks(qtype, rows, cols, std, rng)
    return raw.reshape(*reversed(ne[1:]), raw.shape[-1]), qtype


def _tensor_info(t: dict) -> tuple[list[int], np.dtype, int, T | None]:
    """GGUFWriter.add_tensor_info's arguments for a spec tensor, before its data exists."""
    qtype, ne = T[t["type"]], t["ne"]
    if qtype in (T.F32, T.F16):
        dtype = np.dtype(np.float32 if qtype == T.F32 else np.float16)
        return list(reversed(ne)), dtype, int(np.prod(ne)) * dtype.itemsize, None
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    row_bytes = ne[0] // block * size
    shape = [*reversed(ne[1:]), row_bytes]
    return shape, np.dtype(np.uint8), int(np.prod(shape)), qtype


def write_replica(spec: dict, out: str | Path, seed: int = 0) -> Path:
    """Write the replica tensor by tensor (one tensor in memory at a time: a 3B file is 2 GB)."""
    rng = np.random.default_rng(seed)
    meta = spec["metadata"]
    arch = meta["general.architecture"]
    w = gguf.GGUFWriter(str(out), arch)
    for k, v in meta.items():
        if k == "general.architecture":
            continue
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v) if 0 <= v < 2**32 else w.add_int64(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, list):
            w.add_array(k, v)
    n_vocab = spec["n_vocab"]
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", [f"<{i}>" for i in range(n_vocab)])
    w.add_array("tokenizer.ggml.token_type", [1] * n_vocab)
    w.add_array("tokenizer.ggml.merges", ["< 1"])
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    for t in spec["tensors"]:
        shape, dtype, nbytes, raw_dtype = _tensor_info(t)
        w.add_tensor_info(t["name"], shape, dtype, nbytes, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in spec["tensors"]:
        data, _ = _tensor_data(t, arch, rng)
        w.write_tensor_data(np.ascontiguousarray(data))
        del data
    w.close()
    return Path(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", help="a shape spec (JSON) made with --spec-from")
    ap.add_argument("out", nargs="?", help="the GGUF file to write")
    ap.add_argument("--spec-from", metavar="GGUF", help="print the shape spec of a real file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.spec_from:
        json.dump(spec_from(args.spec_from), sys.stdout, indent=0)
        print()
        return 0
    if not args.spec or not args.out:
        ap.error("give SPEC and OUT, or --spec-from GGUF")
    write_replica(json.loads(Path(args.spec).read_text()), args.out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
