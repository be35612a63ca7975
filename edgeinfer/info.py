"""What a model file holds and how this machine runs it, as `edgeinfer info` prints it (and the chat app's
model screen shows it): `model_info(path)` reads the GGUF header into a dict, `format_info` lays it out.
"""

from __future__ import annotations

import time

from .errors import EdgeInferError
from .progress import format_bytes as _human_bytes


def _human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def model_info(path: str) -> dict:
    """What `edgeinfer info` prints, as a dict (the chat app shows it too)."""
    from .gguf import GGUFFile

    start = time.perf_counter()
    f = GGUFFile(path)
    load_s = time.perf_counter() - start
    m = f.metadata
    arch = f.architecture or "unknown"
    n_params = sum(t.n_elements for t in f.tensors.values())
    n_bytes = sum(t.n_bytes for t in f.tensors.values())
    tokens = m.get("tokenizer.ggml.tokens")
    info = {
        "path": str(path),
        "name": m.get("general.name"),
        "architecture": arch,
        "gguf_version": f.version,
        "file_size": f.file_size,
        "n_params": n_params,
        "bits_per_weight": round(8 * n_bytes / max(n_params, 1), 2),
        "context_length": f.arch_get("context_length"),
        "n_layer": f.arch_get("block_count"),
        "n_embd": f.arch_get("embedding_length"),
        "n_ff": f.arch_get("feed_forward_length"),
        "n_head": f.arch_get("attention.head_count"),
        "n_head_kv": f.arch_get("attention.head_count_kv"),
        "n_expert": f.arch_get("expert_count"),
        "n_expert_used": f.arch_get("expert_used_count"),
        "rope_freq_base": f.arch_get("rope.freq_base"),
        "tokenizer": m.get("tokenizer.ggml.model"),
        "tokenizer_pre": m.get("tokenizer.ggml.pre"),
        "n_vocab": len(tokens) if tokens is not None else None,
        "chat_template": "in file" if m.get("tokenizer.chat_template") else "none (built-in used)",
        "n_tensors": len(f.tensors),
        "tensor_types": f.type_counts(),
        "open_seconds": round(load_s, 4),
        "kv_bytes_per_token": _kv_bytes_per_token(f),
    }
    info["runnable"], info["not_runnable_why"] = runnable(f)
    for key in ("n_ff", "n_head", "n_head_kv"):  # per-layer arrays in some files
        value = info[key]
        if hasattr(value, "tolist"):
            info[key] = value.tolist()
    return info


def runnable(f) -> tuple[bool, list[str]]:
    """Whether edgeinfer can run the open GGUF file: its architecture (and hyper-parameters), its tensor
    types and its tokenizer, checked as load() checks them but without building anything. Returns
    (True, []) or (False, one sentence per reason)."""
    from .arch import check_formats, load_config
    from .tokenizer.pretokenize import resolve_pre
    from .tokenizer.vocab import SUPPORTED_MODELS

    why = []
    for check in (load_config, check_formats):
        try:
            check(f)
        except EdgeInferError as e:
            why.append(str(e))
    model = f.metadata.get("tokenizer.ggml.model")
    if model is None:
        why.append("the file has no tokenizer (tokenizer.ggml.model is missing).")
    elif model not in SUPPORTED_MODELS:
        why.append(f"tokenizer model {str(model)[:80]!r} is not supported (supported: {', '.join(SUPPORTED_MODELS)}).")
    elif model == "gpt2":
        try:
            resolve_pre(str(f.metadata.get("tokenizer.ggml.pre") or "default"))
        except EdgeInferError as e:
            why.append(str(e))
    return not why, why


def _kv_bytes_per_token(f) -> dict | None:
    """Bytes of K and V (and convolution rows, LFM2) one token takes in the KV cache, per kv_type (None for
    an unknown architecture)."""
    from .arch import load_config
    from .engine.kv_cache import kv_bytes_per_token, layer_geometry
    from .nn.kv import KV_TYPES

    try:
        c = load_config(f)
    except EdgeInferError:
        return None
    dims = c.kv_dims()  # per layer where the layers differ (Gemma 4); with convolution rows (LFM2)
    sizes = {d for _, *hd in layer_geometry(dims["n_layer"], dims["n_head_kv"], dims["head_dim"], dims["head_dim_v"])
             for d in hd} | ({dims["conv_dim"]} if dims.get("n_conv_layer") else set())  # fmt: skip
    return {
        name: kv_bytes_per_token({**dims, "kv_type": name})
        for name, t in KV_TYPES.items()
        if not any(d % t.block for d in sizes)
    }


def _format_kv(per_token: dict | None, n_ctx: int | None) -> str | None:
    if not per_token:
        return None
    from .nn.kv import DEFAULT_KV_TYPE

    n = n_ctx or 4096
    parts = [
        f"{k} {_human_bytes(v * n)}" + (" (default)" if k == DEFAULT_KV_TYPE else "") for k, v in per_token.items()
    ]
    return f"{', '.join(parts)} at {n} tokens (--kv-type)"


def format_info(info: dict) -> str:
    """`edgeinfer info`'s text for a model_info() dict (also shown by the chat app)."""
    why = info.get("not_runnable_why") or []
    rows = [
        ("name", info["name"]),
        ("runnable", None if "runnable" not in info else "yes" if info["runnable"] else "no: " + " ".join(why)),
        ("architecture", info["architecture"]),
        ("file", f"{info['path']} ({_human_bytes(info['file_size'])}, GGUF v{info['gguf_version']})"),
        ("parameters", f"{_human_count(info['n_params'])} ({info['bits_per_weight']} bits per weight)"),
        ("context length", info["context_length"]),
        ("layers", info["n_layer"]),
        ("embedding", info["n_embd"]),
        ("feed forward", info["n_ff"]),
        ("heads (kv)", f"{info['n_head']} ({info['n_head_kv']})"),
    ]
    if info["n_expert"]:
        rows.append(("experts (used)", f"{info['n_expert']} ({info['n_expert_used']})"))
    rows += [
        ("rope base", info["rope_freq_base"]),
        ("KV cache", _format_kv(info.get("kv_bytes_per_token"), 4096)),
        ("tokenizer", f"{info['tokenizer']} (pre: {info['tokenizer_pre']}), {info['n_vocab']} tokens"),
        ("chat template", info["chat_template"]),
        ("tensors", f"{info['n_tensors']}: " + ", ".join(f"{k} x{v}" for k, v in info["tensor_types"].items())),
        ("opened in", f"{info['open_seconds'] * 1000:.0f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{key:>{width}}  {value}" for key, value in rows if value is not None)


def format_system(report: dict) -> str:
    feats = " ".join(k for k, on in report.get("cpu_features", {}).items() if on) or "-"
    lines = [
        f"cpu          {report['cpu']}",
        f"threads      {report['threads']} (the cores this process may use)",
        f"features     {feats}",
    ]
    if report.get("native_built"):
        lines.append(f"native ISA   {report['isa']} (of {', '.join(report['isas'])}; EDGEINFER_ISA overrides)")
        if report.get("isa_path"):
            lines.append(f"             {report['isa_path']}")
        if report.get("isa_requested_unavailable"):
            lines.append(f"             EDGEINFER_ISA={report['isa_requested_unavailable']} cannot run here")
        lines.append(f"repack       {'x8 rows at load' if report['repack'] else 'off (EDGEINFER_REPACK=0)'}")
    else:
        lines.append(f"native       not built ({report.get('why_not_built')}): the Numba backend runs")
    return "\n".join(lines)
