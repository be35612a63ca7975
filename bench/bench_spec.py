"""Speculative decoding against plain decoding, measured in one run: tokens/s, speed-up, acceptance, tokens/J.

    python bench/bench_spec.py                          # both tasks, 3 alternating rounds, 2 threads
    python bench/bench_spec.py --tasks ngram --rounds 5 --json spec.json
    python bench/bench_spec.py --llama-python /work/llamaenv/bin/python   # llama.cpp's prompt lookup beside

Tasks (temperature 0: every mode gives the same tokens, checked on every run):
- ngram: SmolLM2-135M-Instruct Q4_1 asked to repeat a paragraph exactly (prompt lookup pays when a reply
  quotes its input), and the same model on a free chat question (where it should not pay, and the
  tuner should turn it off: the figure there shows what speculation costs when it fails).
- draft: SmolLM2-135M in F32 (dequantized from the Q4_1 file) as the target, its Q8_0 and Q4_0
  re-quantizations as drafts (made with edgeinfer.tools.requant into ~/.cache/edgeinfer/spec/ on first
  use), on a few chat prompts.

Each round runs every mode once, in turn (plain first), after one untimed warm-up of each (which also
teaches the tuner the costs of this machine). Speed is decode speed, (tokens - 1) / seconds from the
first generated token to the last, as `edgeinfer run --verbose` reports it; the draft's own prefill
counts in the speculative time. Reported: the median and best of the rounds, and the speed-up of each
(median over median, best over best). Tokens per joule come from edgeinfer.energy (RAPL where readable,
otherwise a labelled estimate from CPU time) around the whole call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import edgeinfer
from edgeinfer.energy import open_meter
from edgeinfer.models import cache_dir, resolve_model

PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips after "
    "decades of salt wind. Every evening the keeper climbed the one hundred and twelve steps to light "
    "the lamp, and every morning he wrote the weather in a leather book that his grandfather had begun. "
    "Ships no longer needed the light, but the keeper believed that a promise made to the sea should "
    "be kept, whether or not anyone was watching."
)
REPEAT = [{"role": "user", "content": f"Repeat the following text exactly:\n\n{PARAGRAPH}"}]
CHAT_PROMPTS = [
    [{"role": "user", "content": "Write a short story about a robot who learns to paint."}],
    [{"role": "user", "content": "Explain how photosynthesis works."}],
    [{"role": "user", "content": "Give me a list of ten fruits and their colors."}],
]


def spec_dir() -> Path:
    """~/.cache/edgeinfer/spec (beside the models cache; EDGEINFER_HOME moves both)."""
    return cache_dir().parent / "spec"


def draft_pair(log) -> dict[str, Path]:
    """SmolLM2 in F32, Q8_0 and Q4_0 from the registry's Q4_1 file, made once (never in git)."""
    from gguf.constants import GGMLQuantizationType as T

    from edgeinfer.tools import requant

    src = resolve_model("smollm2-135m")
    folder = spec_dir()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"smollm2-135m-{name}.gguf" for name in ("f32", "q8_0", "q4_0")}
    for name, path in paths.items():
        if path.is_file():
            continue
        log(f"making {path}")
        partial = path.with_suffix(".partial")
        if name == "f32":
            requant.dequantize_gguf(src, partial, progress=False)
        else:
            requant.requantize_gguf(src, partial, T[name.upper()], progress=False)
        os.replace(partial, path)
    return paths


def run_once(llm, messages, mode, n_gen, meter) -> dict:
    """One reply; mode None (plain), "ngram" / "draft" (the fixed policy) or "ngram+adaptive" / "draft+adaptive"."""
    llm.spec_config.adaptive = bool(mode) and mode.endswith("+adaptive")
    with meter.measure() as m:
        text = llm.chat(messages, max_tokens=n_gen, temperature=0, speculative=mode.split("+")[0] if mode else None)
    s = llm.last_stats
    return {
        "text": text,
        "tokens": list(s.tokens),
        "n": s.n_generated,
        "tps": s.tg_tps,
        "joules": m.joules,
        "drafted": s.n_drafted,
        "accepted": s.n_accepted,
        "spec_off": s.spec_off,
    }


def measure(llm, messages, modes: list[str | None], n_gen: int, rounds: int, meter, log) -> dict:
    """Alternating rounds of every mode; checks that all give the same tokens."""
    runs: dict[str, list[dict]] = {str(m): [] for m in modes}
    for mode in modes:  # warm-up: compilation, caches, the tuner's costs
        run_once(llm, messages, mode, n_gen, meter)
    for r in range(rounds):
        for mode in modes:
            res = run_once(llm, messages, mode, n_gen, meter)
            runs[str(mode)].append(res)
            log(f"  round {r + 1} {str(mode):>5}: {res['tps']:6.1f} tok/s, {res['n']} tokens"
                + (f", accepted {res['accepted']}/{res['drafted']}" if res["drafted"] else ""))  # fmt: skip
    base = runs[str(modes[0])][0]["tokens"]
    out = {}
    for mode in modes:
        rs = runs[str(mode)]
        same = all(x["tokens"] == base for x in rs)
        tps = [x["tps"] for x in rs]
        drafted = sum(x["drafted"] for x in rs)
        accepted = sum(x["accepted"] for x in rs)
        tokens = sum(x["n"] for x in rs)
        joules = sum(x["joules"] for x in rs)
        out[str(mode)] = {
            "tps_median": statistics.median(tps),
            "tps_best": max(tps),
            "tps_all": tps,
            "n_generated": rs[0]["n"],
            "drafted": drafted,
            "accepted": accepted,
            "acceptance": accepted / drafted if drafted else None,
            "tokens_per_joule": tokens / joules if joules > 0 else None,
            "turned_off": any(x["spec_off"] for x in rs),
            "same_tokens_as_plain": same,
        }
    plain = out[str(modes[0])]
    for mode in modes[1:]:
        o = out[str(mode)]
        o["speedup_median"] = o["tps_median"] / plain["tps_median"]
        o["speedup_best"] = o["tps_best"] / plain["tps_best"]
    return out


# -- llama.cpp's prompt lookup (llama-cpp-python, a separate interpreter) ----------------------------------

LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
cfg = json.loads(sys.argv[1])
out = {}
for mode in ("plain", "lookup"):
    kw = dict(draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10, max_ngram_size=2)) if mode == "lookup" else {}
    llm = Llama(cfg["model"], n_ctx=1024, n_threads=cfg["threads"], n_batch=512, verbose=False, **kw)
    times = []
    for r in range(cfg["rounds"] + 1):
        llm.reset()
        t_first = None
        n = 0
        start = time.perf_counter()
        for chunk in llm.create_chat_completion(cfg["messages"], max_tokens=cfg["n_gen"], temperature=0.0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                n += 1
                if t_first is None:
                    t_first = time.perf_counter()
        end = time.perf_counter()
        if r > 0:
            times.append((n, t_first, end))
    out[mode] = [(n - 1) / (end - t0) for n, t0, end in times]
print(json.dumps(out))
"""


def llama_lookup(llama_python: str, model: str, messages, n_gen: int, rounds: int, threads: int) -> dict:
    cfg = json.dumps({"model": model, "messages": messages, "n_gen": n_gen, "rounds": rounds, "threads": threads})
    r = subprocess.run([llama_python, "-c", LLAMA_SCRIPT, cfg], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    plain, look = res["plain"], res["lookup"]
    return {
        "plain_tps_median": statistics.median(plain),
        "lookup_tps_median": statistics.median(look),
        "speedup_median": statistics.median(look) / statistics.median(plain),
        "plain_tps_all": plain,
        "lookup_tps_all": look,
        "note": "streamed chunks counted as tokens (llama-cpp-python yields one per token)",
    }


# -- report -----------------------------------------------------------------------------------------------


def table(title: str, res: dict) -> str:
    rows = [f"{title}", "| mode | tok/s median | best | speed-up (median / best) | acceptance | tok/J | same tokens |",
            "|---|---:|---:|---:|---:|---:|:---:|"]  # fmt: skip
    for mode, o in res.items():
        sp = f"{o['speedup_median']:.2f}x / {o['speedup_best']:.2f}x" if "speedup_median" in o else "1.00x"
        acc = f"{o['acceptance']:.0%} ({o['accepted']}/{o['drafted']})" if o["acceptance"] is not None else "-"
        if o.get("turned_off"):
            acc += ", off"
        tpj = f"{o['tokens_per_joule']:.2f}" if o["tokens_per_joule"] else "n/a"
        rows.append(f"| {mode if mode != 'None' else 'plain'} | {o['tps_median']:.1f} | {o['tps_best']:.1f} | {sp} | "
                    f"{acc} | {tpj} | {'yes' if o['same_tokens_as_plain'] else 'NO'} |")  # fmt: skip
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", choices=("ngram", "draft"), default=["ngram", "draft"])
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="tokens per reply (default 128)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (default 3)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--policy", choices=("fixed", "adaptive", "both"), default="both",
                    help="speculation policy: the fixed draft length (the default), the adaptive tuner, or both")
    ap.add_argument("--drafts", nargs="+", default=["q8_0", "q4_0"], choices=("q8_0", "q4_0"))
    ap.add_argument("--prompts", type=int, default=len(CHAT_PROMPTS), help="chat prompts for the draft task")
    ap.add_argument("--llama-python", default=None, help="python with llama-cpp-python: llama.cpp's prompt lookup beside")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    def policies(mode: str) -> list[str]:
        return {"fixed": [mode], "adaptive": [mode + "+adaptive"], "both": [mode, mode + "+adaptive"]}[args.policy]

    meter = open_meter("cpu")
    load1 = os.getloadavg()
    result = {
        "machine": {"load_before": load1, "threads": args.threads, "backend": args.backend, "cpu_count": os.cpu_count()},
        "energy_source": meter.source,
        "energy_note": meter.note,
        "edgeinfer_version": edgeinfer.__version__,
        "n_gen": args.n_gen,
        "rounds": args.rounds,
        "tasks": {},
    }
    try:
        result["commit"] = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                          cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    except OSError:
        result["commit"] = None
    out = [f"load average before: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {args.threads} threads, backend {args.backend}; "
           f"energy: {meter.source}"]  # fmt: skip

    if "ngram" in args.tasks:
        path = resolve_model("smollm2-135m")
        llm = edgeinfer.load(path, n_ctx=2048, n_threads=args.threads, backend=args.backend, progress=False)
        for name, messages in (("repeat", REPEAT), ("chat", CHAT_PROMPTS[0])):
            log(f"ngram / {name}: SmolLM2-135M Q4_1")
            res = measure(llm, messages, [None, *policies("ngram")], args.n_gen, args.rounds, meter, log)
            result["tasks"][f"ngram_{name}"] = res
            out.append(table(f"\nn-gram lookup, SmolLM2-135M Q4_1, {name} prompt:", res))
        if args.llama_python:
            log("llama.cpp prompt lookup (repeat)")
            lc = llama_lookup(args.llama_python, str(path), REPEAT, args.n_gen, args.rounds, args.threads)
            result["tasks"]["llama_cpp_lookup_repeat"] = lc
            if "error" in lc:
                out.append(f"llama.cpp prompt lookup: failed ({lc['error']})")
            else:
                out.append(f"llama.cpp (LlamaPromptLookupDecoding, max_ngram_size 2, 10 tokens), repeat prompt: "
                           f"plain {lc['plain_tps_median']:.1f} tok/s, lookup {lc['lookup_tps_median']:.1f} tok/s, "
                           f"{lc['speedup_median']:.2f}x (medians)")  # fmt: skip
        del llm

    if "draft" in args.tasks:
        paths = draft_pair(log)
        for d in args.drafts:
            llm = edgeinfer.load(paths["f32"], draft=paths[d], n_ctx=2048, n_threads=args.threads,
                                 backend=args.backend, progress=False)  # fmt: skip
            for i, messages in enumerate(CHAT_PROMPTS[: args.prompts]):
                log(f"draft {d} / prompt {i}: SmolLM2-135M F32 target")
                res = measure(llm, messages, [None, *policies("draft")], args.n_gen, args.rounds, meter, log)
                result["tasks"][f"draft_{d}_prompt{i}"] = res
                prompt = textwrap.shorten(messages[0]["content"], 48)
                out.append(table(f"\ndraft {d.upper()} for SmolLM2-135M F32, prompt {i} ({prompt!r}):", res))
            del llm
    result["machine"]["load_after"] = os.getloadavg()
    out.append(f"\nload average after: {' '.join(f'{x:.2f}' for x in result['machine']['load_after'])}; "
               f"commit {result['commit']}")
    print("\n".join(out))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
