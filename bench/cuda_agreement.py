"""GPU logits against CPU logits (and against llama.cpp's, where a fixture exists), model by model.

    python bench/cuda_agreement.py MODEL.gguf [MODEL.gguf ...] [--tokens 96] [--json out.json]

For each model: the logits of every position of one random token sequence (fixed seed; or the ids of
tests/fixtures/logits_<name>.npz for the real SmolLM2 and Gemma 3 files), with every layer and the
output head on the GPU (n_gpu_layers=-1), with half the layers there, and on the CPU (n_gpu_layers=0,
backend auto). Passes when the argmax agrees at >= 98% of positions (a near-tie within half a logit,
either way, counts) and the largest difference stays within 6% of the logits' scale (the tolerance the
tests give CPU backends with 8-bit activations against the float reference); against llama.cpp, the
agreement of tests/reference_model.py (DESIGN.md's criterion).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import edgeinfer  # noqa: E402

FIXTURES = {"SmolLM2-135M-Instruct.Q4_1.gguf": "logits_smollm2.npz", "gemma-3-270m-q4_k_m.gguf": "logits_gemma3.npz"}


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    rows = np.arange(len(ours))
    ob, tb = ours.argmax(-1), theirs.argmax(-1)
    agree = (ob == tb) | (theirs[rows, ob] >= theirs.max(-1) - 0.5) | (ours[rows, tb] >= ours.max(-1) - 0.5)
    scale = float(np.abs(theirs).max())
    top = np.argsort(-theirs, axis=-1)[:, :8]
    diff_top = np.abs(np.take_along_axis(ours, top, -1) - np.take_along_axis(theirs, top, -1))
    return {
        "argmax_exact": float((ob == tb).mean()),
        "argmax": float(agree.mean()),
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "max_rel_diff": float(np.abs(ours - theirs).max() / scale) if scale else 0.0,
        "top8_mean_diff": float(diff_top.mean()),
        "scale": scale,
        "finite": bool(np.isfinite(ours).all()),
    }


def passed(c: dict) -> bool:
    return c["finite"] and c["argmax"] >= 0.98 and c["max_rel_diff"] <= 0.06


def run(path: str, n_tokens: int) -> dict:
    out: dict = {"model": Path(path).name}
    fixture = FIXTURES.get(Path(path).name)
    fx = np.load(ROOT / "tests" / "fixtures" / fixture) if fixture else None
    t0 = time.perf_counter()
    cpu = edgeinfer.load(path, n_ctx=512, n_gpu_layers=0, progress=False)
    ids = fx["ids"].tolist() if fx is not None else np.random.default_rng(7).integers(0, cpu.n_vocab, n_tokens).tolist()
    ref = cpu.logits(ids)
    out["cpu_backend"] = repr(cpu.model.backend)
    out["cpu_seconds"] = time.perf_counter() - t0
    n_layer = int(cpu.gguf.arch_get("block_count"))
    del cpu
    for label, ngl in (("all", -1), ("half", n_layer // 2)):
        t0 = time.perf_counter()
        gpu = edgeinfer.load(path, n_ctx=512, n_gpu_layers=ngl, progress=False)
        logits = gpu.logits(ids)
        c = compare(logits, ref)
        c["seconds"] = time.perf_counter() - t0
        c["offload"] = gpu.offload.describe() if gpu.offload else "none"
        c["pass"] = passed(c)
        out[f"gpu_{label}_vs_cpu"] = c
        if fx is not None and label == "all":
            from reference_model import agreement

            a = agreement(logits, fx)
            a["pass"] = a["argmax"] >= 0.98
            out["gpu_vs_llama_cpp"] = a
        del gpu
    out["pass"] = all(v["pass"] for k, v in out.items() if isinstance(v, dict) and "pass" in v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from edgeinfer.kernels import cuda

    if not cuda.available():
        print(f"cuda_agreement: CUDA is unavailable here: {cuda.unavailable_reason()}", file=sys.stderr)
        return 2
    results = []
    for m in args.models:
        r = run(m, args.tokens)
        results.append(r)
        for k, v in r.items():
            if isinstance(v, dict):
                print(f"{r['model']}: {k}: " + ", ".join(f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()), flush=True)
        print(f"{r['model']}: {'PASS' if r['pass'] else 'FAIL'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
