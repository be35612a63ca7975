"""`edgeinfer` command line: run, chat, serve, ps, stop, bench, pull, list, info."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .engine.spec_policy import MODES as SPEC_MODES
from .errors import EdgeInferError
from .info import format_info, format_system, model_info
from .progress import format_bytes as _human_bytes

BACKEND_CHOICES = ("auto", "native", "numba", "reference")  # as edgeinfer.bench (not imported: slow)


def cmd_info(args) -> int:
    from .models import resolve_model

    if args.system:
        from .kernels.native import system_report
        from .system import default_threads

        report = dict(system_report(), threads=default_threads())
        print(json.dumps(report, indent=2) if args.json else format_system(report))
        if args.model is None:
            return 0
    if args.model is None:
        raise EdgeInferError("edgeinfer info needs a MODEL (a path or a name), or --system.")
    path = resolve_model(args.model)
    info = model_info(str(path))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
    return 0


def cmd_pull(args) -> int:
    from .models import pull

    for name in args.names:
        path = pull(name, progress=not args.quiet, force=args.force)
        print(path)
    return 0


def cmd_list(args) -> int:
    from .models import MODELS, cache_dir, is_cached, model_path

    rows = []
    for source in MODELS.values():
        cached = is_cached(source)
        where = str(model_path(source)) if cached else "not downloaded (edgeinfer pull " + source.name + ")"
        rows.append((source.name, _human_bytes(source.size), where, source.description))
    if args.json:
        print(json.dumps([dict(zip(("name", "size", "path", "description"), r)) for r in rows], indent=2))
        return 0
    print(f"models cache: {cache_dir()}")
    width = max(len(r[0]) for r in rows)
    for name, size, where, desc in rows:
        print(f"  {name:<{width}}  {size:>9}  {desc}\n  {'':<{width}}  {'':>9}  {where}")
    return 0


def _sampling_kwargs(args) -> dict:
    return {
        "max_tokens": args.max_tokens,
        "temperature": args.temp,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repeat_penalty": args.repeat_penalty,
        "seed": args.seed,
    }


def _backend_kwargs(args) -> dict:
    """`backend=` for edgeinfer.load from --backend: a backend object built for the thread count
    (None: load's own default)."""
    if getattr(args, "backend", None) is None:
        return {}
    from .bench import resolve_backend
    from .system import default_threads

    return {"backend": resolve_backend(args.backend, args.threads or default_threads())}


def _add_ngl(p) -> None:
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=None, metavar="N",
                   help="layers on an NVIDIA GPU (CUDA, built on first use): N for the first N, -1 for as many "
                   "as fit (none, with a warning, where CUDA is unavailable); default 0, or "
                   "$EDGEINFER_N_GPU_LAYERS")  # fmt: skip


def _add_kv_type(p) -> None:
    from .nn.kv import DEFAULT_KV_TYPE, KV_TYPES

    p.add_argument("--kv-type", choices=tuple(KV_TYPES), default=DEFAULT_KV_TYPE,
                   help="what the KV cache stores K and V in: f16 (default, as llama.cpp), q8_0 (8-bit blocks, "
                   "about half of f16's memory) or f32 (twice f16's)")  # fmt: skip


def _ngl_env(args) -> None:
    """serve and chat load the model themselves: -ngl reaches edgeinfer.load as its default."""
    if getattr(args, "n_gpu_layers", None) is not None:
        from .kernels.cuda.offload import ENV_N_GPU_LAYERS, check_n_gpu_layers

        os.environ[ENV_N_GPU_LAYERS] = str(check_n_gpu_layers(args.n_gpu_layers))


def cmd_bench(args) -> int:
    from .bench import format_table, run_bench

    def log(msg: str) -> None:
        print(f"edgeinfer bench: {msg}", file=sys.stderr, flush=True)

    spec = None if args.spec == "off" else args.spec
    if spec is None and args.draft is not None:
        spec = "draft"
    result = run_bench(
        args.model,
        n_prompt=args.n_prompt,
        n_gen=args.n_gen,
        repetitions=args.repetitions,
        n_threads=args.threads,
        backend=args.backend,
        n_ctx=args.ctx_size,
        energy_source=args.energy,
        log=log if (args.verbose or args.json) else None,
        spec=spec,
        draft=args.draft,
        spec_prompt=args.spec_prompt,
        n_gpu_layers=args.n_gpu_layers,
        kv_type=args.kv_type,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def cmd_run(args) -> int:
    from .api import load
    from .repl import ChatSession, print_stats

    llm = load(args.model, n_ctx=args.ctx_size, n_threads=args.threads, draft=args.draft,
               n_gpu_layers=args.n_gpu_layers, kv_type=args.kv_type, **_backend_kwargs(args))  # fmt: skip
    if args.verbose:
        print(f"KV cache: {llm.kv_type}, {_human_bytes(llm.kv_bytes_per_token() * llm.n_ctx)} at {llm.n_ctx} tokens",
              file=sys.stderr)  # fmt: skip
    params = _sampling_kwargs(args)
    # speculative decoding: auto = the draft model when --draft gave one, else plain decoding
    params["speculative"] = None if args.spec == "off" else args.spec
    if args.draft_max is not None:
        params["draft_max"] = args.draft_max
    if args.draft_p_min is not None:
        params["draft_p_min"] = args.draft_p_min
    if args.spec_adaptive:
        llm.spec_config.adaptive = True
    params.update(_constraint_kwargs(args))
    if args.prompt is None:
        prompt_stdin = not sys.stdin.isatty() and args.raw
        if not prompt_stdin:
            return ChatSession(llm, params, system=args.system, verbose=args.verbose,
                               reasoning_budget=args.reasoning_budget).run()
        args.prompt = sys.stdin.read()
    try:
        if args.raw:
            pieces = llm.generate(args.prompt, stream=True, stop=args.stop or None, **params)
        else:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
                {"role": "user", "content": args.prompt}
            ]
            budget = {} if args.reasoning_budget is None else {"reasoning_budget": args.reasoning_budget}
            pieces = llm.chat(messages, stream=True, stop=args.stop or None, **params, **budget)
        for piece in pieces:
            if not isinstance(piece, str):  # a ChatDelta (with a reasoning budget): the thinking to stderr
                if piece.reasoning:
                    sys.stderr.write(piece.reasoning)
                    sys.stderr.flush()
                piece = piece.content
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.verbose:
        print_stats(llm.last_stats, sys.stderr)
    return 0


def _constraint_kwargs(args) -> dict:
    """--json-schema FILE|JSON and --grammar FILE (GBNF or Lark) -> generate()'s keywords (checked here:
    a schema or grammar that does not compile is an error before the model runs, never free text)."""
    from pathlib import Path

    from .engine.constrain import grammar_from_request

    out = {}
    if getattr(args, "json_schema", None):
        text = args.json_schema
        if not text.lstrip().startswith("{") and os.path.exists(text):
            text = Path(text).read_text(encoding="utf-8")
        out["json_schema"] = text
    if getattr(args, "grammar", None):
        try:
            out["grammar"] = Path(args.grammar).read_text(encoding="utf-8")
        except OSError as e:
            raise EdgeInferError(f"--grammar: cannot read {args.grammar!r} ({e.strerror or e}).") from None
    grammar_from_request(grammar=out.get("grammar"), json_schema=out.get("json_schema"))  # GrammarError, named
    return out


def cmd_chat(args) -> int:
    try:  # the TUI (and textual) load only for this command
        from .tui.app import run_chat
    except ImportError as e:
        raise EdgeInferError(f"`edgeinfer chat` needs the textual package ({e}); pip install textual") from None
    _ngl_env(args)

    return run_chat(
        args.model, n_ctx=args.ctx_size, n_threads=args.threads, backend=args.backend, draft=args.draft,
        params=_sampling_kwargs(args), system=args.system, energy_source=args.energy, kv_type=args.kv_type,
    )  # fmt: skip


def cmd_serve(args) -> int:
    from .server.models import parse_bytes
    from .server.multi import serve_models

    _ngl_env(args)
    if args.replicas is not None or args.ray_address or args.min_replicas is not None or args.max_replicas is not None:
        return _serve_ray(args)
    aliases = args.alias or []
    if len(aliases) > max(1, len(args.model)):
        raise EdgeInferError(f"{len(aliases)} --alias values for {len(args.model)} MODEL arguments: give one per model.")
    try:
        max_memory = parse_bytes(args.max_memory) if args.max_memory is not None else None
    except ValueError as e:
        raise EdgeInferError(f"--max-memory: {e}.") from None
    return serve_models(
        args.model, models_dir=args.models_dir, aliases=aliases, host=args.host, port=args.port,
        parallel=args.parallel, ctx_size=args.ctx_size,
        api_key=args.api_key or os.environ.get("EDGEINFER_API_KEY") or None, threads=args.threads,
        max_queue=args.max_queue, max_body_bytes=args.max_body_kb * 1024,
        energy_source=args.energy, kv_size=args.kv_size, draft=args.draft,
        speculative=None if args.spec == "off" else args.spec, kv_type=args.kv_type,
        cors_origins=args.cors_origin or None, reasoning_budget=args.reasoning_budget,
        keep_alive=args.keep_alive, max_models=args.max_models, max_memory=max_memory, pooling=args.pooling,
        **_backend_kwargs(args),
    )  # fmt: skip


def _serve_ray(args) -> int:
    """`serve MODEL --replicas N`: replicas on Ray Serve (server/ray_serve.py)."""
    from .server.ray_serve import serve_ray

    if len(args.model) != 1 or args.models_dir:
        raise EdgeInferError("--replicas serves one model: give exactly one MODEL (and no --models-dir).")
    return serve_ray(
        args.model[0], replicas=args.replicas or args.min_replicas or 1, ray_address=args.ray_address,
        min_replicas=args.min_replicas, max_replicas=args.max_replicas, host=args.host, port=args.port,
        threads=args.threads, parallel=args.parallel, ctx_size=args.ctx_size, max_queue=args.max_queue,
        kv_size=args.kv_size, draft=args.draft, backend=args.backend or "auto", kv_type=args.kv_type,
        model_name=(args.alias or [None])[0], api_key=args.api_key or os.environ.get("EDGEINFER_API_KEY") or None,
        max_body_bytes=args.max_body_kb * 1024, energy_source=args.energy,
        speculative=None if args.spec == "off" else args.spec, cors_origins=args.cors_origin or None,
        reasoning_budget=args.reasoning_budget,
    )  # fmt: skip


def _server_call(args, method: str, path: str, body: dict | None = None) -> dict:
    """A request to the local server (`ps`, `stop`): its JSON, or EdgeInferError saying what went wrong."""
    import httpx

    key = args.api_key or os.environ.get("EDGEINFER_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"http://{args.host}:{args.port}{path}"
    try:
        r = httpx.request(method, url, json=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as e:
        raise EdgeInferError(f"No edgeinfer server answers at {args.host}:{args.port} ({e}); start one with "
                             "`edgeinfer serve`, or give --host/--port.") from None  # fmt: skip
    try:
        data = r.json()
    except ValueError:
        data = {}
    if r.status_code >= 400:
        message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
        raise EdgeInferError(message or f"The server answered {r.status_code}.")
    return data


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "-"
    d = abs(now - t)
    text = f"{d:.0f} seconds" if d < 90 else f"{d / 60:.0f} minutes" if d < 5400 else f"{d / 3600:.1f} hours"
    return f"{text} ago" if t <= now else f"in {text}"


def cmd_ps(args) -> int:
    import time

    models = _server_call(args, "GET", "/models").get("data", [])
    shown = [m for m in models if args.all or m.get("state") in ("loaded", "loading", "unloading")]
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    now = time.time()
    rows = [("NAME", "STATE", "MEMORY", "REQUESTS", "LAST USED", "UNTIL")]
    for m in shown:
        if m.get("state") != "loaded":
            until = "-"
        elif m.get("active_requests"):
            until = "while in use"
        else:
            until = "forever" if m.get("expires_at") is None else _ago(m.get("expires_at"), now)
        rows.append((m["id"], m.get("state", "?"), _human_bytes(m.get("memory_bytes") or 0) if m.get("memory_bytes") else "-",
                     str(m.get("active_requests", 0)), _ago(m.get("last_used"), now), until))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_stop(args) -> int:
    for name in args.models:
        data = _server_call(args, "POST", "/models/unload", {"model": name})
        state = data.get("status")
        print(f"{name}: " + {"unloaded": "unloaded", "unloading": "unloads when its running requests end",
                             "not_loaded": "was not loaded"}.get(state, str(state)))  # fmt: skip
    return 0


def _add_sampling(p, per: str) -> None:
    """The sampling flags of run and chat; their defaults are SamplingParams' (and the chat's max_tokens)."""
    from .chat import REPLY_MAX_TOKENS
    from .engine.sampling import SamplingParams

    d = SamplingParams()
    p.add_argument("-n", "--max-tokens", type=int, default=REPLY_MAX_TOKENS,
                   help=f"most tokens {per} (default {REPLY_MAX_TOKENS})")  # fmt: skip
    p.add_argument("--temp", type=float, default=d.temperature,
                   help=f"temperature, 0 for greedy (default {d.temperature})")  # fmt: skip
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--min-p", type=float, default=d.min_p)
    p.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty)
    p.add_argument("--seed", type=int, default=d.seed)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="edgeinfer", description="Run quantized language models from GGUF files."
    )
    parser.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="chat with a model, or answer one prompt and exit")
    p.add_argument("model", help="a GGUF path or a model name (fetched on first use)")
    p.add_argument("prompt", nargs="?", help="answer this and exit (without it: an interactive chat)")
    p.add_argument("--raw", action="store_true", help="complete the prompt as plain text, no chat template")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--json-schema", default=None, metavar="FILE|JSON",
                   help="the reply is JSON obeying this JSON Schema (a file, or the schema's text)")  # fmt: skip
    p.add_argument("--grammar", default=None, metavar="FILE",
                   help="the reply obeys this grammar (llama.cpp GBNF, or Lark) read from FILE")  # fmt: skip
    p.add_argument("--reasoning-budget", type=int, default=None, metavar="TOKENS",
                   help="a reasoning model's <think> block is closed after this many tokens; its text goes to "
                   "stderr, the answer to stdout (one-shot chat)")  # fmt: skip
    _add_sampling(p, "to generate")
    p.add_argument("--stop", action="append", help="stop at this text (may be repeated)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: the available cores)")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("--verbose", action="store_true", help="print prompt and generation speed after each reply")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="kernels to run on (default: auto)")
    p.add_argument("--draft", default=None, metavar="PATH_OR_NAME",
                   help="a smaller model with the same vocabulary, for speculative decoding")  # fmt: skip
    p.add_argument("--spec", choices=("auto", *SPEC_MODES, "off"), default="auto",
                   help="speculative decoding: auto (the draft model when --draft is given, else off), draft, "
                   "ngram (drafts copied from the prompt and the reply so far: for replies that quote their "
                   "input), off. At --temp 0 the reply is the same either way; --verbose shows the acceptance")  # fmt: skip
    p.add_argument("--draft-max", type=int, default=None, metavar="N",
                   help="most tokens drafted per pass (default 16)")  # fmt: skip
    p.add_argument("--draft-p-min", type=float, default=None, metavar="P",
                   help="a draft model stops drafting where its top probability falls under P (default 0.75, "
                   "llama.cpp's rule; 0: never)")  # fmt: skip
    p.add_argument("--spec-adaptive", action="store_true",
                   help="let a tuner choose the draft length from measured costs and turn speculation off where "
                   "it does not pay (default: the fixed length above)")  # fmt: skip
    _add_ngl(p)
    _add_kv_type(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "chat",
        help="a chat in the terminal (Textual app): streaming Markdown replies, settings, save/load",
        description="Chat with MODEL in a full-screen terminal app. Enter sends, Ctrl+J breaks the line, "
        "Escape stops a reply, F1 lists the keys and /commands, Ctrl+Q quits.",
    )
    p.add_argument("model", help="a GGUF path or a model name (fetched on first use)")
    p.add_argument("--system", help="system prompt")
    _add_sampling(p, "per reply")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: the available cores)")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="kernels to run on (default: auto)")
    p.add_argument("--draft", default=None, metavar="MODEL",
                   help="a small draft model for speculative decoding (a path or a name)")  # fmt: skip
    p.add_argument("--energy", choices=("auto", "rapl", "nvml", "estimate"), default="auto",
                   help="where tokens per joule come from (default auto: RAPL where readable, else a labelled "
                   "estimate)")  # fmt: skip
    _add_ngl(p)
    _add_kv_type(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "serve",
        help="an OpenAI- and Anthropic-compatible HTTP API over one or many models",
        description="Serve models over HTTP: OpenAI's /v1/chat/completions, /v1/completions, /v1/responses, "
        "/v1/embeddings, /v1/models; Anthropic's /v1/messages (and /count_tokens); /models, /models/load, "
        "/models/unload, /health, /metrics, /tokenize, /detokenize. Models load on first use and unload when "
        "idle (--keep-alive) or when --max-models / --max-memory need room. Ctrl-C stops.",
    )
    p.add_argument("model", nargs="*", metavar="MODEL",
                   help="GGUF paths or model names (fetched on first use); a request's \"model\" picks one "
                   "(its id: the name, the file's stem, or --alias); the first is loaded at start")  # fmt: skip
    p.add_argument("--models-dir", default=None, metavar="DIR",
                   help="also serve every .gguf file in DIR (id: the file's stem), each loaded on first use")  # fmt: skip
    p.add_argument("--keep-alive", default="5m", metavar="DURATION",
                   help="how long an idle model stays loaded, for requests that do not say (their \"keep_alive\"): "
                   "\"5m\" (default), \"1h\", seconds, 0 (unload after each reply) or -1 (keep)")  # fmt: skip
    p.add_argument("--max-models", type=int, default=2, metavar="N",
                   help="models loaded at once; loading one more unloads the least recently used idle one (default 2)")  # fmt: skip
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory the loaded models may hold (4G, 512M, bytes); default: 80%% of what the machine "
                   "has available at start")  # fmt: skip
    p.add_argument("--pooling", choices=("mean", "last"), default="mean",
                   help="how /v1/embeddings pools the last hidden state: mean of all tokens (default) or the last token")  # fmt: skip
    p.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="serve MODEL from N replicas on Ray Serve (pip install 'edgeinfer[ray]'): a local Ray "
                   "cluster, or the one at --ray-address; --threads are split between them; requests that share "
                   "a prompt prefix go to the replica holding it")  # fmt: skip
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (\"auto\", or host:port of `ray start --head`) instead of starting one")  # fmt: skip
    p.add_argument("--min-replicas", type=int, default=None, metavar="N",
                   help="with --replicas: let Ray Serve's autoscaler (queue depth) go down to N replicas")  # fmt: skip
    p.add_argument("--max-replicas", type=int, default=None, metavar="N",
                   help="with --replicas: let Ray Serve's autoscaler (queue depth) go up to N replicas")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("-np", "--parallel", type=int, default=1, metavar="N",
                   help="sequences generated at once, per model (default 1)")  # fmt: skip
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context of one sequence in tokens (default 4096)")
    p.add_argument("--draft", default=None, metavar="MODEL",
                   help="a draft model for speculative decoding (same vocabulary, smaller or cheaper)")  # fmt: skip
    p.add_argument("--spec", choices=("auto", *SPEC_MODES, "off"), default="auto",
                   help="speculation for requests that do not ask (their \"speculative\" field): auto (the draft "
                   "model when one is given, else off), draft, ngram (prompt lookup) or off (default auto)")  # fmt: skip
    p.add_argument("--reasoning-budget", type=int, default=None, metavar="TOKENS",
                   help="the most tokens a <think> block may take before it is closed, for requests that do not "
                   "say (their \"reasoning_budget\"); default: no limit")  # fmt: skip
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="a browser origin (https://app.example) allowed to call the API besides local pages; "
                   "repeat for more (default: $EDGEINFER_CORS_ORIGINS, comma-separated)")  # fmt: skip
    p.add_argument("--kv-size", type=int, default=None, metavar="TOKENS",
                   help="KV cache of all sequences together, in tokens, shared in blocks (default: ctx-size x parallel; "
                   "a request waits until the blocks it may need are free)")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=16, metavar="Q",
                   help="requests that may wait for a free slot; more get 503 + Retry-After (default 16)")  # fmt: skip
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                   "(or set EDGEINFER_API_KEY)")  # fmt: skip
    p.add_argument("--alias", action="append", default=None, metavar="NAME",
                   help="the id of a MODEL in the API (default: its name or file stem); repeat for each MODEL, in order")  # fmt: skip
    p.add_argument("--max-body-kb", type=int, default=4096, metavar="KB",
                   help="largest request body (default 4096 KiB)")  # fmt: skip
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: the available cores)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="kernels to run on (default: auto)")
    p.add_argument("--energy", choices=("auto", "rapl", "nvml", "estimate"), default="auto",
                   help="energy source for /metrics (default auto: RAPL where readable, else a labelled "
                   "estimate)")  # fmt: skip
    _add_ngl(p)
    _add_kv_type(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "bench",
        help="prompt and generation speed, and tokens per joule (llama-bench's method)",
        description="pp: one batch of P random prompt tokens into a fresh cache; tg: N tokens decoded one "
        "at a time after one token of context. One warm-up each, then R runs; the median is reported.",
    )
    p.add_argument("model", help="a GGUF path or a model name (fetched on first use)")
    p.add_argument("-p", "--n-prompt", type=int, default=512, metavar="P", help="prompt tokens (default 512)")
    p.add_argument("-n", "--n-gen", type=int, default=128, metavar="N", help="generated tokens (default 128)")
    p.add_argument("-r", "--repetitions", type=int, default=3, metavar="R", help="timed runs of each (default 3)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: the available cores)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="KV cache cells (default P + N)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="kernels to run on (default: auto)")
    p.add_argument("--energy", choices=("auto", "rapl", "nvml", "estimate"), default="auto",
                   help="energy source (default auto: RAPL where readable, else a labelled estimate; with -ngl, "
                   "NVML's GPU board energy added where readable)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress on stderr)")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    p.add_argument("--spec", choices=("off", *SPEC_MODES), default="off",
                   help="also time greedy replies to a chat prompt, plain and with this speculative decoding "
                   "(tokens/s, speed-up, acceptance, tokens per joule); default off (draft when --draft is given)")  # fmt: skip
    p.add_argument("--draft", default=None, metavar="PATH_OR_NAME", help="the draft model for --spec draft")
    p.add_argument("--spec-prompt", default=None, metavar="TEXT",
                   help="the chat prompt for --spec (default: 'Repeat the following text exactly: ...' for "
                   "ngram, a short story for draft)")  # fmt: skip
    _add_ngl(p)
    _add_kv_type(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="show what a model file holds (--system: this machine and its kernels)")
    p.add_argument("model", nargs="?", help="a GGUF path or a model name (see `edgeinfer list`)")
    p.add_argument("--system", action="store_true", help="the CPU, its features and the kernels chosen")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    for name, help in (("ps", "what a running `edgeinfer serve` has loaded (memory, requests, until when)"),
                       ("stop", "unload models from a running `edgeinfer serve` (after their running requests)")):  # fmt: skip
        p = sub.add_parser(name, help=help, description=help)
        if name == "stop":
            p.add_argument("models", nargs="+", metavar="MODEL", help="the model ids to unload")
        else:
            p.add_argument("--all", action="store_true", help="every model the server knows, loaded or not")
            p.add_argument("--json", action="store_true", help="print the server's JSON")
        p.add_argument("--host", default=os.environ.get("EDGEINFER_HOST", "127.0.0.1"),
                       help="the server's address (default 127.0.0.1, or $EDGEINFER_HOST)")  # fmt: skip
        p.add_argument("--port", type=int, default=int(os.environ.get("EDGEINFER_PORT", "8080")),
                       help="the server's port (default 8080, or $EDGEINFER_PORT)")  # fmt: skip
        p.add_argument("--api-key", default=None, metavar="KEY", help="the server's key (or EDGEINFER_API_KEY)")
        p.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
        p.set_defaults(func=cmd_stop if name == "stop" else cmd_ps)

    p = sub.add_parser("pull", help="download named models into the cache")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("list", help="list known models and what is downloaded")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EdgeInferError as e:
        print(f"edgeinfer: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgeinfer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edgeinfer info x | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
