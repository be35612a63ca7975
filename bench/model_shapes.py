"""Shapes of real models at the sizes people run, in the quant mixes llama.cpp's quantizer makes, and
random-weight replicas of them (bench/make_replica.py) cached on disk.

    python bench/model_shapes.py                       # (re)write bench/shapes/MODEL-QUANT.json
    python bench/model_shapes.py --replica llama-3.2-1b:q4_k_m    # print the replica's path, making it once
    python bench/model_shapes.py --check-llama-python PY          # the type rules against llama.cpp's quantizer

A shape is MODEL:QUANT, e.g. `llama-3.2-1b:q4_k_m`; its file is bench/shapes/llama-3.2-1b-q4_k_m.json
(make_replica.py's format: metadata without the tokenizer, each tensor's name, type and ne, in the order
llama.cpp's quantizer writes them). MODELS holds the real hyperparameters (from the models' config.json
and llama.cpp's converter); tensor_type() is llama.cpp 0.3.36's src/llama-quant.cpp reduced to the
three mixes here, without an imatrix: Q4_0 and Q4_K_M put a tied token_embd (the output head) in Q6_K,
Q8_0 keeps it Q8_0; Q4_K_M gives attn_v and ffn_down Q6_K in the layers its use_more_bits picks
(the first and last eighth, and every third between) and Q4_K elsewhere; 1-D tensors stay F32.
Llama 3's rope_freqs.weight carries the real llama3 rope-scaling factors (values in the JSON).

Replicas are written on first use to $EDGEINFER_HOME/replicas (else ~/.cache/edgeinfer/replicas), named
after a hash of the shape, so a changed shape makes a new file; *.gguf never goes in git. The 1B files
take 0.7-1.3 GB, the 3B Q4_K_M 2 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"

# hyperparameters of the real models (config.json; llama.cpp's convert_hf_to_gguf.py names)
MODELS: dict[str, dict] = {
    "llama-3.2-1b": {
        "arch": "llama", "name": "Llama 3.2 1B Instruct", "size_label": "1B",
        "n_embd": 2048, "n_layer": 16, "n_head": 32, "n_head_kv": 8, "head_dim": 64, "n_ff": 8192,
        "n_vocab": 128256, "tied": True, "n_ctx_train": 131072, "rope_base": 500000.0, "rms_eps": 1e-5,
        # config.json rope_scaling: {"rope_type": "llama3", "factor": 32, low 1, high 4, original 8192}
        "llama3_rope": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_ctx": 8192},
    },
    "llama-3.2-3b": {
        "arch": "llama", "name": "Llama 3.2 3B Instruct", "size_label": "3B",
        "n_embd": 3072, "n_layer": 28, "n_head": 24, "n_head_kv": 8, "head_dim": 128, "n_ff": 8192,
        "n_vocab": 128256, "tied": True, "n_ctx_train": 131072, "rope_base": 500000.0, "rms_eps": 1e-5,
        "llama3_rope": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_ctx": 8192},
    },
    "qwen3-1.7b": {
        "arch": "qwen3", "name": "Qwen3 1.7B", "size_label": "1.7B",
        "n_embd": 2048, "n_layer": 28, "n_head": 16, "n_head_kv": 8, "head_dim": 128, "n_ff": 6144,
        "n_vocab": 151936, "tied": True, "n_ctx_train": 40960, "rope_base": 1000000.0, "rms_eps": 1e-6,
        "qk_norm": True,
    },
}

# quant mix -> (llama_ftype, its default tensor type)
QUANTS: dict[str, tuple[int, str]] = {"q4_0": (2, "Q4_0"), "q8_0": (7, "Q8_0"), "q4_k_m": (15, "Q4_K")}

BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # tensor_type_fallback


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_type(name: str, ne: list[int], quant: str, n_layer: int, tied: bool) -> str:
    """The type llama.cpp's quantizer gives tensor `name` (shape ne) in mix `quant` (no imatrix, no
    overrides). The layer counters of llama-quant.cpp are the layer numbers here: it visits tensors
    sorted by layer, and these models have one attn_v and one ffn_down per layer."""
    if len(ne) < 2:
        return "F32"
    default = QUANTS[quant][1]
    t = default
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        t = "Q8_0" if ne[0] % BLOCK[default] else ("Q6_K" if default != "Q8_0" else "Q8_0")
    elif name == "token_embd.weight":
        t = default
    elif "attn_v.weight" in name or "ffn_down" in name:
        if quant == "q4_k_m" and use_more_bits(layer, n_layer):
            t = "Q6_K"
    if ne[0] % BLOCK[t]:
        t = FALLBACK.get(t, t)
        if ne[0] % BLOCK[t]:
            t = "F16"
    return t


def llama3_rope_factors(head_dim: int, base: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_ctx: int) -> list[float]:
    """rope_freqs.weight as convert_hf_to_gguf.py writes it for rope_type llama3 (float32 values)."""
    import numpy as np

    freqs = 1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    low_wavelen, high_wavelen = original_ctx / low_freq_factor, original_ctx / high_freq_factor
    out = []
    for freq in freqs.astype(np.float64):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return [float(np.float32(v)) for v in out]


def _sorted_like_llama(names: list[str]) -> list[str]:
    """llama_model_loader's weight_name_comparer: by layer number (none first), then by name."""
    def key(n: str):
        return (int(n.split(".")[1]) if n.startswith("blk.") else -1, n)

    return sorted(names, key=key)


def make_spec(model: str, quant: str, **override) -> dict:
    """The shape of MODEL in mix QUANT (make_replica.py's format). override replaces hyperparameters
    (a test's smaller version: n_layer, n_embd, n_vocab, ...)."""
    if model not in MODELS:
        raise KeyError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    if quant not in QUANTS:
        raise KeyError(f"unknown quant {quant!r}; known: {', '.join(QUANTS)}")
    h = {**MODELS[model], **override}
    arch, n_embd, hd, n_layer = h["arch"], h["n_embd"], h["head_dim"], h["n_layer"]
    ne: dict[str, list[int]] = {"token_embd.weight": [n_embd, h["n_vocab"]], "output_norm.weight": [n_embd]}
    if not h["tied"]:
        ne["output.weight"] = [n_embd, h["n_vocab"]]
    values = {}
    if "llama3_rope" in h:
        ne["rope_freqs.weight"] = [hd // 2]
        values["rope_freqs.weight"] = llama3_rope_factors(hd, h["rope_base"], **h["llama3_rope"])
    for il in range(n_layer):
        p = f"blk.{il}."
        ne.update({
            p + "attn_norm.weight": [n_embd], p + "ffn_norm.weight": [n_embd],
            p + "attn_q.weight": [n_embd, h["n_head"] * hd], p + "attn_k.weight": [n_embd, h["n_head_kv"] * hd],
            p + "attn_v.weight": [n_embd, h["n_head_kv"] * hd], p + "attn_output.weight": [h["n_head"] * hd, n_embd],
            p + "ffn_gate.weight": [n_embd, h["n_ff"]], p + "ffn_up.weight": [n_embd, h["n_ff"]],
            p + "ffn_down.weight": [h["n_ff"], n_embd],
        })  # fmt: skip
        if h.get("qk_norm"):
            ne[p + "attn_q_norm.weight"] = [hd]
            ne[p + "attn_k_norm.weight"] = [hd]
    meta = {
        "general.architecture": arch,
        "general.type": "model",
        "general.name": f"{h['name']} (random-weight replica)",
        "general.size_label": h["size_label"],
        f"{arch}.block_count": n_layer,
        f"{arch}.context_length": h["n_ctx_train"],
        f"{arch}.embedding_length": n_embd,
        f"{arch}.feed_forward_length": h["n_ff"],
        f"{arch}.attention.head_count": h["n_head"],
        f"{arch}.attention.head_count_kv": h["n_head_kv"],
        f"{arch}.rope.freq_base": h["rope_base"],
        f"{arch}.attention.layer_norm_rms_epsilon": h["rms_eps"],
        f"{arch}.attention.key_length": hd,
        f"{arch}.attention.value_length": hd,
        "general.file_type": QUANTS[quant][0],
    }
    if arch == "llama":  # LlamaModel's converter adds these; Qwen3's does not (n_rot = head_dim)
        meta[f"{arch}.vocab_size"] = h["n_vocab"]
        meta[f"{arch}.rope.dimension_count"] = hd
    meta["general.quantization_version"] = 2
    tensors = []
    for name in _sorted_like_llama(list(ne)):
        t = {"name": name, "type": tensor_type(name, ne[name], quant, n_layer, h["tied"]), "ne": ne[name]}
        if name in values:
            t["values"] = values[name]
        tensors.append(t)
    return {"source": f"{h['name']} {quant.upper()}: hyperparameters from config.json, tensor types by "
                      f"llama.cpp 0.3.36's quantizer rules (bench/model_shapes.py)",
            "n_vocab": h["n_vocab"], "metadata": meta, "tensors": tensors}  # fmt: skip


def dumps(spec: dict) -> str:
    """The JSON of a shape file: one tensor per line."""
    head = {k: v for k, v in spec.items() if k != "tensors"}
    lines = json.dumps(head, indent=1)[:-2]  # drop the closing "\n}"
    body = ",\n".join(" " + json.dumps(t) for t in spec["tensors"])
    return f'{lines},\n"tensors": [\n{body}\n]\n}}\n'


def shape_names() -> list[str]:
    return [f"{m}:{q}" for m in MODELS for q in QUANTS]


def parse_shape(shape: str) -> tuple[str, str]:
    model, sep, quant = shape.partition(":")
    if not sep or model not in MODELS or quant.lower() not in QUANTS:
        raise ValueError(f"unknown shape {shape!r}: give MODEL:QUANT, one of {', '.join(shape_names())}")
    return model, quant.lower()


def shape_file(shape: str) -> Path:
    model, quant = parse_shape(shape)
    return SHAPES_DIR / f"{model}-{quant}.json"


def load_shape(shape: str) -> dict:
    return json.loads(shape_file(shape).read_text())


def replica_dir() -> Path:
    home = os.environ.get("EDGEINFER_HOME")
    if home:
        return Path(home).expanduser() / "replicas"
    return Path(os.path.expanduser("~/.cache")) / "edgeinfer" / "replicas"


def replica_path(shape: str, seed: int = 0) -> Path:
    text = shape_file(shape).read_text()
    digest = hashlib.sha256(f"{text}\nseed={seed}".encode()).hexdigest()[:10]
    model, quant = parse_shape(shape)
    return replica_dir() / f"{model}-{quant}-{digest}.gguf"


def ensure_replica(shape: str, seed: int = 0, log=None) -> Path:
    """The replica of `shape`, written on first use (to a temporary name, renamed when complete)."""
    path = replica_path(shape, seed)
    if path.exists():
        return path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_replica import write_replica

    path.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"writing the replica of {shape} to {path} (once)")
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        write_replica(load_shape(shape), tmp, seed)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def decode_bytes(tensors: dict[str, tuple[str, list[int], int]]) -> tuple[int, int]:
    """(bytes a decode step reads, bytes of the file's tensors) from {name: (type, ne, nbytes)}: every
    tensor but the token embedding (one row of it is read), plus the output head, which is token_embd
    itself when the file has no output.weight."""
    total = sum(nb for _, _, nb in tensors.values())
    read = total
    if "token_embd.weight" in tensors and "output.weight" in tensors:
        _, ne, nb = tensors["token_embd.weight"]
        read -= nb - nb // max(int(ne[-1]), 1)
    return read, total


def file_decode_bytes(path: str | Path) -> tuple[int, int]:
    """decode_bytes() of a GGUF file."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edgeinfer.gguf import GGUFFile

    f = GGUFFile(str(path))
    return decode_bytes({n: (t.type_name, list(t.ne), int(t.n_bytes)) for n, t in f.tensors.items()})


# ---- checking the type rules against llama.cpp's own quantizer ----

_QUANTIZE = r"""
import sys, llama_cpp
src, dst, ftype = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = ftype
p.nthread = 2
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
sys.exit(rc)
"""


def check_with_llamacpp(llama_python: str) -> int:
    """Write each model at reduced width (all its layers, F32, the real names) and quantize it with
    llama.cpp's quantizer in each mix; the types must be those of make_spec at the same width."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from make_replica import write_replica

    from edgeinfer.gguf import GGUFFile

    small = {"n_embd": 256, "n_ff": 512, "head_dim": 64, "n_head": 4, "n_head_kv": 2, "n_vocab": 512}
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        for model in MODELS:
            f32 = make_spec(model, "q8_0", **small)
            for t in f32["tensors"]:
                t["type"] = "F32"
            src = Path(d) / f"{model}-f32.gguf"
            write_replica(f32, src)
            for quant, (ftype, _) in QUANTS.items():
                dst = Path(d) / f"{model}-{quant}.gguf"
                r = subprocess.run([llama_python, "-c", _QUANTIZE, str(src), str(dst), str(ftype)],
                                   capture_output=True, text=True)  # fmt: skip
                if r.returncode != 0:
                    print(f"{model} {quant}: llama.cpp's quantizer failed:\n{r.stderr[-2000:]}")
                    bad += 1
                    continue
                got = {n: t.type_name for n, t in GGUFFile(str(dst)).tensors.items()}
                want = {t["name"]: t["type"] for t in make_spec(model, quant, **small)["tensors"]}
                diff = {n: (want.get(n), got.get(n)) for n in set(got) | set(want) if want.get(n) != got.get(n)}
                order_ok = list(got) == list(want)
                print(f"{model} {quant}: {len(got)} tensors, "
                      f"{'types agree' if not diff else f'{len(diff)} differ: {sorted(diff.items())[:6]}'}, "
                      f"order {'agrees' if order_ok else 'differs'}")  # fmt: skip
                bad += bool(diff) or not order_ok
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replica", nargs="+", metavar="MODEL:QUANT", help="make (once) and print these replicas' paths")
    ap.add_argument("--check-llama-python", metavar="PY", help="an interpreter with llama-cpp-python: check the type rules")
    args = ap.parse_args(argv)
    if args.check_llama_python:
        return check_with_llamacpp(args.check_llama_python)
    if args.replica:
        for shape in args.replica:
            print(ensure_replica(shape, log=lambda m: print(m, file=sys.stderr)))
        return 0
    for model in MODELS:
        for quant in QUANTS:
            spec = make_spec(model, quant)
            path = SHAPES_DIR / f"{model}-{quant}.json"
            path.write_text(dumps(spec))
            read, total = decode_bytes({t["name"]: (t["type"], t["ne"], _nbytes(t["type"], t["ne"])) for t in spec["tensors"]})
            print(f"{path.relative_to(SHAPES_DIR.parent.parent)}: {total / 1e6:.0f} MB of tensors, "
                  f"{read / 1e6:.0f} MB read per decoded token")  # fmt: skip
    return 0


def _nbytes(type_name: str, ne: list[int]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return math.prod(ne) // block * size


if __name__ == "__main__":
    sys.exit(main())
