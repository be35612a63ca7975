"""`edgeinfer bench`: prompt and generation speed, and tokens per joule, by llama-bench's method.

pp (prompt processing): one forward pass of `n_prompt` random token ids (fixed seed) in one batch,
into a fresh KV cache. tg (text generation): `n_gen` tokens decoded one at a time after one token of
context, into a fresh cache. One untimed warm-up of each, full length, comes first (Numba compilation
and cache loading are not timed), then `repetitions` timed runs of each; speeds are reported as the median of
the runs (with min, max and every run). An energy meter (edgeinfer.energy) is read around every timed
run: tokens per joule = tokens of one run / joules of one run (medians), and the meter's source
("rapl", "nvml+...", or "estimate") is always reported beside it.

    result = run_bench("model.gguf", n_prompt=512, n_gen=128, repetitions=3, n_threads=2)
    result["pp_tps"], result["tg_tps"], result["tokens_per_joule"], result["energy_source"]
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .engine.spec_policy import MODES
from .engine.kv_cache import KVCache
from .errors import EdgeInferError
from .nn.kv import DEFAULT_KV_TYPE

BACKEND_CHOICES = ("auto", "native", "numba", "reference")
SEED = 1234


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise EdgeInferError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def bench_context(n_prompt: int, n_gen: int, n_ctx: int | None = None) -> int:
    """Cells the KV cache needs: pp fills n_prompt, tg fills 1 + n_gen. Default n_prompt + n_gen
    (llama-bench's); a given n_ctx must hold both."""
    need = max(n_prompt, n_gen + 1)
    if n_ctx is None:
        return max(need, n_prompt + n_gen)
    n_ctx = _positive("the context size (-c)", n_ctx)
    if n_ctx < need:
        raise EdgeInferError(
            f"A context of {n_ctx} tokens is too small: pp{n_prompt} needs {n_prompt} cells and tg{n_gen} "
            f"needs {n_gen + 1} (one token of context plus {n_gen}). Use -c {need} or more, or omit -c."
        )
    return n_ctx


def resolve_backend(name, n_threads: int):
    """A Backend object for `name` ("auto", "native", "numba", "reference"), or `name` itself when it
    is already a backend. "auto" asks the kernels for their best; where this version does not know
    "auto" yet, it is the portable default ("numba"). An unknown or unbuildable backend is an
    EdgeInferError that names the choices."""
    if name is not None and not isinstance(name, str):
        return name
    name = name or "auto"
    from .kernels import BACKENDS, get_backend

    try:
        return get_backend(name, n_threads=n_threads)
    except (ValueError, ImportError, OSError) as e:
        if name == "auto":
            return get_backend("numba", n_threads=n_threads)
        choices = ", ".join(dict.fromkeys(("auto", *BACKENDS)))
        raise EdgeInferError(f"Backend {name!r} is not available here ({e}); choose one of: {choices}.") from None


def backend_name(backend) -> str:
    return str(getattr(backend, "name", None) or type(backend).__name__)


def backend_isa(backend) -> str | None:
    """The instruction set the native kernels use here ("avx2", ...), None for other backends."""
    if backend is None or backend_name(backend) != "native":
        return None
    try:
        from .kernels.native import native_isa

        return native_isa()
    except Exception:  # an older or unbuilt extension: the bench still runs
        return None


def repacked_weights(model) -> int:
    """How many of the model's matmul weights run in a backend's own layout (x8: rows interleaved)."""
    from .nn import Linear

    parts = [p for b in getattr(model, "blocks", []) for p in vars(b).values()]
    linears = [v for p in parts for v in getattr(p, "__dict__", {}).values() if isinstance(v, Linear)]
    if isinstance(getattr(model, "output", None), Linear):
        linears.append(model.output)
    return sum(lin.weight.layout != "plain" for lin in linears)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict:
    from .system import available_cpus

    return {
        "cpu": cpu_model(),
        "cores_available": available_cpus(),
        "cores_online": os.cpu_count(),
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def git_commit() -> str | None:
    """`git describe --always --dirty` of the checkout edgeinfer runs from, None outside one."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _stats(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _time_pp(model, tokens: np.ndarray, n_ctx: int, meter):
    cache = KVCache.for_model(model, n_ctx)
    with meter.measure() as m:
        start, cpu = time.perf_counter(), time.process_time()
        model.forward(tokens, cache, all_logits=False)
        seconds = time.perf_counter() - start
    return seconds, m, time.process_time() - cpu  # CPU: every thread of the process (a spinning one too)


def _time_tg(model, tokens: np.ndarray, n_ctx: int, meter):
    cache = KVCache.for_model(model, n_ctx)
    model.forward(tokens[:1], cache, all_logits=False)  # the one token of context, untimed
    with meter.measure() as m:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(1, len(tokens)):
            model.forward(tokens[i : i + 1], cache, all_logits=False)
        seconds = time.perf_counter() - start
    return seconds, m, time.process_time() - cpu


def bench_model(
    model,
    n_prompt: int = 512,
    n_gen: int = 128,
    repetitions: int = 3,
    n_ctx: int | None = None,
    meter=None,
    seed: int = SEED,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Time pp and tg on a built model (anything with forward(ids, cache, all_logits) and kv_dims()).
    Returns the measurements only (speeds, joules, the meter's source); run_bench adds the context."""
    n_prompt = _positive("the prompt length (-p)", n_prompt)
    n_gen = _positive("the number of generated tokens (-n)", n_gen)
    repetitions = _positive("the number of repetitions (-r)", repetitions)
    n_ctx = bench_context(n_prompt, n_gen, n_ctx)
    if meter is None:
        from .energy import open_meter

        meter = open_meter("cpu")
    log = log or (lambda msg: None)
    n_vocab = int(model.n_vocab)
    rng = np.random.default_rng(seed)
    pp_tokens = rng.integers(0, n_vocab, n_prompt, dtype=np.int64).astype(np.int32)
    tg_tokens = rng.integers(0, n_vocab, n_gen + 1, dtype=np.int64).astype(np.int32)

    log(f"warm-up: pp{n_prompt}, tg{n_gen}")
    t0 = time.perf_counter()
    _time_pp(model, pp_tokens, n_ctx, meter)
    _time_tg(model, tg_tokens, n_ctx, meter)  # the whole length: kernels may compile per shape
    warmup_s = time.perf_counter() - t0

    counts = getattr(model, "expert_counts", lambda: None)
    experts: dict[str, list] = {}
    pp_s, tg_s, pp_j, tg_j, pp_cpu, tg_cpu = [], [], [], [], [], []
    base = counts()
    for r in range(repetitions):
        seconds, m, cpu = _time_pp(model, pp_tokens, n_ctx, meter)
        pp_s.append(seconds)
        pp_j.append(m.joules)
        pp_cpu.append(cpu)
        log(f"pp{n_prompt} run {r + 1}/{repetitions}: {n_prompt / seconds:.2f} t/s, {m.joules:.3f} J ({m.source})")
    if base is not None:
        experts["pp"] = (counts() - base).tolist()
        base = counts()
    for r in range(repetitions):
        seconds, m, cpu = _time_tg(model, tg_tokens, n_ctx, meter)
        tg_s.append(seconds)
        tg_j.append(m.joules)
        tg_cpu.append(cpu)
        log(f"tg{n_gen} run {r + 1}/{repetitions}: {n_gen / seconds:.2f} t/s, {m.joules:.3f} J ({m.source})")
    if base is not None:
        experts["tg"] = (counts() - base).tolist()

    pp_tps_all = [n_prompt / s for s in pp_s]
    tg_tps_all = [n_gen / s for s in tg_s]
    pp_joules, tg_joules = statistics.median(pp_j), statistics.median(tg_j)
    pp_stats, tg_stats = _stats(pp_tps_all), _stats(tg_tps_all)
    return {
        "pp": n_prompt,
        "tg": n_gen,
        "repetitions": repetitions,
        "n_ctx": n_ctx,
        "seed": seed,
        "pp_tps": pp_stats["median"],
        "tg_tps": tg_stats["median"],
        "pp_tps_min": pp_stats["min"],
        "pp_tps_max": pp_stats["max"],
        "pp_tps_stdev": pp_stats["stdev"],
        "tg_tps_min": tg_stats["min"],
        "tg_tps_max": tg_stats["max"],
        "tg_tps_stdev": tg_stats["stdev"],
        "pp_tps_all": pp_tps_all,
        "tg_tps_all": tg_tps_all,
        "pp_seconds_all": pp_s,
        "tg_seconds_all": tg_s,
        # CPU time of the whole process (all its threads, spinning ones too) per timed run
        "pp_cpu_seconds_all": pp_cpu,
        "tg_cpu_seconds_all": tg_cpu,
        "warmup_seconds": warmup_s,
        "energy_source": meter.source,
        "energy_note": meter.note,
        "energy_is_estimate": "estimate" in meter.source,
        "pp_joules": pp_joules,
        "tg_joules": tg_joules,
        "pp_joules_all": pp_j,
        "tg_joules_all": tg_j,
        "tokens_per_joule": {
            "pp": n_prompt / pp_joules if pp_joules > 0 else None,
            "tg": n_gen / tg_joules if tg_joules > 0 else None,
        },
        # MoE models: how often each expert was chosen over the timed runs, per test, as int lists
        # (n_moe_layer, n_expert); None for a dense model. The tokens are random ids, not text.
        "expert_counts": experts or None,
    }


# -- speculative decoding: plain against speculative replies on a real prompt --------------------------------

SPEC_MODES = MODES  # ("draft", "ngram")
SPEC_PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff, its white paint peeling in long strips after "
    "decades of salt wind. Every evening the keeper climbed the one hundred and twelve steps to light "
    "the lamp, and every morning he wrote the weather in a leather book that his grandfather had begun. "
    "Ships no longer needed the light, but the keeper believed that a promise made to the sea should "
    "be kept, whether or not anyone was watching."
)
# what each mode is measured on by default: n-gram lookup on a reply that quotes its input, a draft
# model on free text
SPEC_PROMPTS = {
    "ngram": f"Repeat the following text exactly:\n\n{SPEC_PARAGRAPH}",
    "draft": "Write a short story about a robot who learns to paint.",
}


def bench_speculative(
    llm,
    mode: str,
    n_gen: int = 128,
    repetitions: int = 3,
    meter=None,
    prompt: str | list[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Greedy replies to one chat prompt (or a list of token ids, completed as they are), plain and with
    speculation `mode` in turn: one untimed warm-up
    of each (it also teaches the tuner this machine's costs), then `repetitions` rounds. Speeds are
    decode speeds ((tokens - 1) / seconds after the first token; a draft's prefill counts with the
    prompt), medians; tokens per joule over whole calls; acceptance over all timed runs."""
    if mode not in SPEC_MODES:
        raise EdgeInferError(f"The speculative mode must be one of {', '.join(SPEC_MODES)}, got {mode!r}.")
    if mode == "draft" and getattr(llm, "draft", None) is None:
        raise EdgeInferError("bench --spec draft needs a draft model: give --draft PATH_OR_NAME.")
    n_gen = _positive("the number of generated tokens (-n)", n_gen)
    repetitions = _positive("the number of repetitions (-r)", repetitions)
    if meter is None:
        from .energy import open_meter

        meter = open_meter("cpu")
    log = log or (lambda msg: None)
    prompt = prompt or SPEC_PROMPTS[mode]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
        reply = lambda spec: llm.chat(messages, max_tokens=n_gen, temperature=0, speculative=spec)  # noqa: E731
    else:
        ids = [int(t) for t in prompt]
        reply = lambda spec: llm.generate(ids, max_tokens=n_gen, temperature=0, speculative=spec)  # noqa: E731

    def once(spec):
        with meter.measure() as m:
            reply(spec)
        s = llm.last_stats
        return {"tps": s.tg_tps, "n": s.n_generated, "joules": m.joules, "tokens": list(s.tokens),
                "drafted": s.n_drafted, "accepted": s.n_accepted, "off": s.spec_off}  # fmt: skip

    log(f"spec warm-up: plain and {mode}")
    once(None)
    once(mode)
    runs: dict[str, list[dict]] = {"plain": [], mode: []}
    for r in range(repetitions):
        for label, spec in (("plain", None), (mode, mode)):
            res = once(spec)
            runs[label].append(res)
            extra = f", accepted {res['accepted']}/{res['drafted']}" if spec else ""
            log(f"spec run {r + 1}/{repetitions} {label}: {res['tps']:.2f} t/s, {res['n']} tokens{extra}")
    plain, spec_runs = runs["plain"], runs[mode]
    drafted = sum(x["drafted"] for x in spec_runs)
    accepted = sum(x["accepted"] for x in spec_runs)

    def tpj(rs):
        joules = sum(x["joules"] for x in rs)
        return sum(x["n"] for x in rs) / joules if joules > 0 else None

    plain_tps = statistics.median(x["tps"] for x in plain)
    spec_tps = statistics.median(x["tps"] for x in spec_runs)
    return {
        "mode": mode,
        "prompt": prompt,
        "n_gen": n_gen,
        "n_generated": plain[0]["n"],
        "plain_tps": plain_tps,
        "spec_tps": spec_tps,
        "plain_tps_all": [x["tps"] for x in plain],
        "spec_tps_all": [x["tps"] for x in spec_runs],
        "speedup": spec_tps / plain_tps if plain_tps > 0 else None,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance": accepted / drafted if drafted else None,
        "turned_off": any(x["off"] for x in spec_runs),
        "same_tokens": all(x["tokens"] == plain[0]["tokens"] for x in plain + spec_runs),
        "tokens_per_joule": {"plain": tpj(plain), "spec": tpj(spec_runs)},
        "draft_model": str(llm.draft.path) if mode == "draft" else None,
    }


def _model_label(llm) -> dict:
    f = llm.gguf
    tensors = list(f.tensors.values())
    n_params = sum(t.n_elements for t in tensors)
    n_bytes = sum(t.n_bytes for t in tensors)
    counts: dict[str, int] = {}
    for t in tensors:  # the weight type that holds the most bytes names the file, as "Q4_1"
        counts[t.type_name] = counts.get(t.type_name, 0) + t.n_bytes
    main_type = max(counts, key=counts.get) if counts else "?"
    try:  # the file's own label (general.file_type: Q4_K_M rather than its biggest tensor's Q8_0)
        from gguf.constants import LlamaFileType

        ftype = LlamaFileType(int(f.metadata["general.file_type"])).name
        main_type = ftype.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (KeyError, ValueError, TypeError):
        pass
    name = f.metadata.get("general.name") or Path(llm.path).stem
    # a Mixture of Experts runs n_used of n_expert experts per token: its active parameters
    n_active = n_params
    n_expert = int(f.metadata.get(f"{f.architecture}.expert_count", 0) or 0)
    if n_expert:
        n_used = int(f.metadata.get(f"{f.architecture}.expert_used_count", n_expert))
        n_experts_params = sum(t.n_elements for t in tensors if t.name.endswith("_exps.weight"))
        n_active = n_params - n_experts_params + n_experts_params * n_used // n_expert
    return {
        "model": str(name),
        "model_path": str(llm.path),
        "model_type": f"{f.architecture or '?'} {_count(n_params)} {main_type}",
        "architecture": f.architecture,
        "model_size": n_bytes,
        "model_params": n_params,
        "model_params_active": n_active,
    }


def _params(result: dict) -> str:
    total, active = result["model_params"], result.get("model_params_active", result["model_params"])
    return _count(total) if active == total else f"{_count(total)} ({_count(active)} active)"


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.0f}{unit}" if n / div >= 10 else f"{n / div:.1f}{unit}"
    return str(n)


def run_bench(
    model,
    n_prompt: int = 512,
    n_gen: int = 128,
    repetitions: int = 3,
    n_threads: int | None = None,
    backend="auto",
    n_ctx: int | None = None,
    meter=None,
    energy_source: str | None = None,
    seed: int = SEED,
    log: Callable[[str], None] | None = None,
    spec: str | None = None,
    draft=None,
    spec_prompt: str | None = None,
    n_gpu_layers: int | None = None,
    kv_type: str = DEFAULT_KV_TYPE,
) -> dict:
    """Benchmark a model (a GGUF path, a registry name, or a loaded edgeinfer LLM): the dict that
    `edgeinfer bench --json` prints. n_threads None: edgeinfer's default (affinity, cgroup quota,
    EDGEINFER_THREADS); backend: "auto", "native", "numba", "reference" or a backend object.
    spec: "ngram" or "draft" adds `result["spec"]` (bench_speculative: greedy replies to a real prompt,
    plain against speculative); draft: the draft model (a path or a name) to load with the model.
    n_gpu_layers: layers on the GPU (edgeinfer.load's; None: $EDGEINFER_N_GPU_LAYERS, else 0); with any,
    the energy meter adds the GPU board's (NVML) to the CPU's, and the result says where the layers ran.
    kv_type: the KV cache's format (edgeinfer.load's; a loaded LLM keeps its own); the result says which,
    and its bytes per token."""
    from . import __version__
    from .system import default_threads

    # check the arguments before the (slow) load
    n_prompt = _positive("the prompt length (-p)", n_prompt)
    n_gen = _positive("the number of generated tokens (-n)", n_gen)
    repetitions = _positive("the number of repetitions (-r)", repetitions)
    if n_threads is not None:
        n_threads = _positive("the number of threads (-t)", n_threads)
    n_ctx = bench_context(n_prompt, n_gen, n_ctx)
    if spec is not None:
        if spec not in SPEC_MODES:
            raise EdgeInferError(f"--spec must be one of {', '.join(SPEC_MODES)} (or off), got {spec!r}.")
        if spec == "draft" and draft is None and not getattr(model, "draft", None):
            raise EdgeInferError("bench --spec draft needs a draft model: give --draft PATH_OR_NAME.")
        n_ctx = max(n_ctx, 2048)  # room for the prompt and the reply
    log = log or (lambda msg: None)
    gpu_asked = False
    if n_gpu_layers != 0 and not hasattr(model, "gguf"):
        from .kernels.cuda.offload import default_n_gpu_layers

        n_gpu_layers = default_n_gpu_layers(n_gpu_layers)
        gpu_asked = n_gpu_layers != 0
    elif hasattr(model, "gguf"):
        plan = getattr(model, "offload", None)
        gpu_asked = bool(plan is not None and plan.device is not None)
    if meter is None:  # before the load: `--energy rapl` where RAPL cannot be read fails at once
        from .energy import open_meter

        # layers on a GPU: its board's energy (NVML) beside the CPU's, where NVML can be read
        meter = open_meter("cuda" if gpu_asked else "cpu", source=energy_source)

    if hasattr(model, "model") and hasattr(model, "gguf"):  # an LLM already loaded
        llm = model
        threads = llm.n_threads
        be = llm.model.backend if hasattr(llm.model, "backend") else None
    else:
        from .api import load
        from .models import resolve_model

        model = resolve_model(model)  # a missing file or unknown name fails before any kernel loads
        threads = n_threads or default_threads()
        be = resolve_backend(backend, threads)
        log(f"loading {model} (backend {backend_name(be)}, {threads} threads)")
        if draft is not None:
            draft = resolve_model(draft)
        llm = load(model, n_ctx=n_ctx, n_threads=threads, backend=be, progress=True, draft=draft,
                   n_gpu_layers=n_gpu_layers or 0, kv_type=kv_type)  # fmt: skip
    result = _model_label(llm)
    plan = getattr(llm, "offload", None)
    on_gpu = plan is not None and plan.device is not None and (plan.n_gpu_layers > 0 or plan.head_on_device)
    if plan is not None:
        log(plan.describe())
    result.update(
        {
            "backend": (backend_name(be) if be is not None else "unknown") + ("+cuda" if on_gpu else ""),
            "n_gpu_layers": plan.n_gpu_layers if plan is not None else 0,
            "offload": plan.summary() if plan is not None else None,
            "offload_description": plan.describe() if plan is not None else None,
            "backend_requested": backend if isinstance(backend, str) else backend_name(backend),
            "threads": threads,
            "threads_effective": int(getattr(be, "n_threads", threads) or threads),
            "isa": backend_isa(be),
            "repacked_weights": repacked_weights(llm.model),
        }
    )
    result.update(bench_model(llm.model, n_prompt, n_gen, repetitions, n_ctx, meter, seed, log))
    result.update({"kv_type": llm.kv_type, "kv_bytes_per_token": llm.kv_bytes_per_token()})
    if spec is not None:
        result["spec"] = bench_speculative(llm, spec, n_gen, repetitions, meter, spec_prompt, log)
    result.update(
        {
            "machine": machine_info(),
            "edgeinfer_version": __version__,
            "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return result


def format_table(result: dict) -> str:
    """llama-bench's table: one row per test, then the energy source and the machine."""
    size_mib = result["model_size"] / 2**20
    head = ["model", "size", "params", "backend", "threads", "test", "t/s", "tok/J"]
    rows = []
    for test, n in (("pp", result["pp"]), ("tg", result["tg"])):
        tpj = result["tokens_per_joule"][test]
        rows.append(
            [
                result["model_type"],
                f"{size_mib:.2f} MiB",
                _params(result),
                result["backend"],
                str(result["threads"]),
                f"{test}{n}",
                f"{result[test + '_tps']:.2f} ± {result[test + '_tps_stdev']:.2f}",
                f"{tpj:.2f}" if tpj is not None else "n/a",
            ]
        )
    sp = result.get("spec")
    if sp:
        for label, key in (("plain", "plain_tps"), (sp["mode"], "spec_tps")):
            tpj = sp["tokens_per_joule"]["plain" if label == "plain" else "spec"]
            runs = sp["plain_tps_all" if label == "plain" else "spec_tps_all"]
            sd = statistics.stdev(runs) if len(runs) > 1 else 0.0
            rows.append([result["model_type"], f"{size_mib:.2f} MiB", _params(result), result["backend"],
                         str(result["threads"]), f"chat{sp['n_gen']} {label}", f"{sp[key]:.2f} ± {sd:.2f}",
                         f"{tpj:.2f}" if tpj is not None else "n/a"])  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    right = {1, 2, 4, 6, 7}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    m = result["machine"]
    out = [line(head), sep, *(line(r) for r in rows), ""]
    out.append(f"t/s: median of {result['repetitions']} runs ± standard deviation; "
               f"tok/J: tokens per joule, source: {result['energy_source']}")  # fmt: skip
    out.append(f"energy: {result['energy_note']}")
    if result.get("kv_type"):
        out.append(f"KV cache: {result['kv_type']}, {result['kv_bytes_per_token']} bytes per token")
    if result.get("offload_description"):
        out.append(f"gpu offload: {result['offload_description']}")
    if sp:
        acc = f"{sp['acceptance']:.1%} ({sp['accepted']}/{sp['drafted']} drafts)" if sp["acceptance"] is not None else "nothing drafted"
        speedup = f"{sp['speedup']:.2f}x" if sp["speedup"] is not None else "n/a"
        draft = f", draft {Path(sp['draft_model']).name}" if sp.get("draft_model") else ""
        off = "; the tuner turned it off for a while" if sp["turned_off"] else ""
        same = "same tokens as plain" if sp["same_tokens"] else "TOKENS DIFFER FROM PLAIN"
        out.append(f"chat{sp['n_gen']}: greedy reply to a chat prompt, plain and {sp['mode']}{draft}: speed-up {speedup}, "
                   f"acceptance {acc}{off}; {same}")  # fmt: skip
    if result.get("expert_counts"):
        from .engine.experts import format_expert_counts

        for test, counts in result["expert_counts"].items():
            n = result[test]
            out.append(format_expert_counts(np.array(counts), title=f"experts chosen in {test}{n} (random token ids)"))
    threads = result["threads"]
    if result.get("threads_effective") not in (None, threads):
        threads = f"{threads} asked, {result['threads_effective']} used"
    out.append(
        f"machine: {m['cpu']}, {m['cores_available']} cores available; threads: {threads}; "
        f"edgeinfer {result['edgeinfer_version']} ({result['commit'] or 'no git checkout'})"
    )
    return "\n".join(out)
