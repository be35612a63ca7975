"""`edgeinfer serve [MODEL ...] [--models-dir DIR]`: many models in one server, in several API dialects.

    app = create_hub(manager, api_key=None)          # any ASGI server runs it
    serve_models(["smollm2-135m", "m/gemma.gguf"])   # load on first use, listen (uvicorn)

The hub routes each request by its `model` field to that model's own app (app.create_app over the
model's runner: the OpenAI chat/completions/tokenize endpoints, unchanged), loading the model on first
use (server/models.py: ModelManager) and holding a lease on it until the reply has been sent, so no
unload cuts a running reply. Beside them it answers, for every model:

    POST /v1/embeddings            OpenAI's shape (input: a string, strings, token ids; float or base64)
    POST /v1/responses             OpenAI's Responses API (server/responses.py)
    POST /v1/messages              Anthropic's Messages API (server/anthropic.py), /v1/messages/count_tokens
    GET  /v1/models, GET /models   every model with its state (loaded, memory, last use)
    POST /models/load, /models/unload   {"model": ID, "keep_alive": ...}
    GET  /metrics                  every model's counters, labelled by model

An unknown model is a 404 in the dialect's own error shape. `keep_alive` in any request body sets how
long its model stays loaded after it (ollama's rule; see server/models.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..engine.runner import Finish, InvalidPromptError, PromptTooLongError, QueueFullError
from ..engine.sampling import SamplingError
from ..errors import ContextFullError, EdgeInferError
from ..nn.kv import DEFAULT_KV_TYPE
from . import anthropic as A
from . import protocol as P
from . import responses as R
from .app import (DEFAULT_MAX_BODY_BYTES, SHUTDOWN_MESSAGE, _ClientGone, _EventStream,
                  _Guard, _guarded, _kv_summary, _ShuttingDown, _Stopping, bind_socket, check_serve_args, cors_from_env,
                  create_app, read_body, run_server, warn_if_open)  # fmt: skip
from .metrics import EnergyClock
from .models import (DEFAULT_KEEP_ALIVE_S, DEFAULT_MAX_MODELS, Entry, Lease, ModelBusy, ModelLoadError, ModelManager,
                     ModelNotFound, ModelSpec, parse_keep_alive, specs_from, tune_allocator)  # fmt: skip

log = logging.getLogger("edgeinfer.server")

FORWARDED = {"/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/tokenize", "/detokenize"}
EMBEDDINGS = {"/v1/embeddings", "/embeddings"}
RESPONSES = {"/v1/responses", "/responses"}
MESSAGES = {"/v1/messages", "/v1/messages/count_tokens"}
HUB_PATHS = FORWARDED | EMBEDDINGS | RESPONSES | MESSAGES | {"/models/load", "/models/unload"}
MAX_EMBED_INPUTS = 2048  # as OpenAI
POOLINGS = ("mean", "last")

_request_model: contextvars.ContextVar[dict | None] = contextvars.ContextVar("edgeinfer_request_model", default=None)


# -- loading real models


def make_loader(ctx_size: int = 4096, parallel: int = 1, max_queue: int = 16, kv_size: int | None = None,
                threads: int | None = None, backend="auto", kv_type: str = DEFAULT_KV_TYPE, draft=None):  # fmt: skip
    """The ModelManager's loader for real models: edgeinfer.load, then a started continuous-batching runner."""

    def loader(spec: ModelSpec):
        from ..api import load
        from ..engine.batch import make_runner

        llm = load(spec.source, n_ctx=ctx_size, n_threads=threads, backend=backend, draft=draft, kv_type=kv_type,
                   progress=False)  # fmt: skip
        runner = make_runner(llm, parallel=parallel, max_queue=max_queue, n_ctx=ctx_size, kv_cells=kv_size)
        runner.start()
        return llm, runner

    return loader


# -- embeddings through the runner


class EmbedBatcher:
    """Embedding requests of one model, run on its runner's worker between decoding steps
    (BatchRunner.run_between_steps), one forward pass of up to `batch_tokens` rows per step: the requests
    that arrived meanwhile go through the model together (llm.embed_passes), and the model's running
    replies keep flowing between the passes of a large request. Never beside another thread running
    that model."""

    def __init__(self, llm, runner, batch_tokens: int = 512):
        self.llm, self.runner, self.batch_tokens = llm, runner, batch_tokens
        self._lock = threading.Lock()
        self._pending: list[tuple[list[list[int]], str, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._job = None  # (EmbedPasses, its requests) being run
        self._scheduled = False
        self._serial = threading.Lock()  # runners without run_between_steps: one pass at a time

    async def embed(self, ids: list[list[int]], pooling: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._pending.append((ids, pooling, fut, loop))
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._schedule()
        return await fut

    def _schedule(self) -> None:
        run = getattr(self.runner, "run_between_steps", None)
        if run is not None:
            job = run(self._pass)
            job.add_done_callback(lambda f: self._failed(f.exception()) if f.exception() else None)
        else:
            threading.Thread(target=self._pass, name="edgeinfer-embed", daemon=True).start()

    def _failed(self, err: BaseException) -> None:
        """The runner refused the work (it stopped): every waiting request gets the error."""
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
            job, self._job = self._job, None
        if job is not None:
            job[0].close()
            pending = job[1] + pending
        for _, _, fut, loop in pending:
            loop.call_soon_threadsafe(_set_exception, fut, err)

    def _pass(self) -> None:
        """One forward pass of the current job (a new job from what waits when there is none); then run
        again after the next decoding step while work is left."""
        with self._lock:
            if self._job is None and self._pending:
                pooling = self._pending[0][1]
                group = [p for p in self._pending if p[1] == pooling]
                self._pending = [p for p in self._pending if p[1] != pooling]
                flat = [t for ids, *_ in group for t in ids]
                try:
                    self._job = (self.llm.embed_passes(flat, pooling, batch_tokens=self.batch_tokens), group)
                except BaseException as e:  # noqa: BLE001 -- each request gets it
                    for _, _, fut, loop in group:
                        loop.call_soon_threadsafe(_set_exception, fut, e)
            job = self._job
        if job is not None:
            passes, group = job
            try:
                with self._serial:
                    finished = passes.step()
                vecs = passes.result() if finished else None
            except BaseException as e:  # noqa: BLE001
                finished, vecs = True, e
            if finished:
                with self._lock:
                    self._job = None
                i = 0
                for ids, _, fut, loop in group:
                    if isinstance(vecs, BaseException):
                        loop.call_soon_threadsafe(_set_exception, fut, vecs)
                    else:
                        loop.call_soon_threadsafe(_set_result, fut, vecs[i : i + len(ids)])
                        i += len(ids)
        with self._lock:
            more = self._job is not None or bool(self._pending)
            self._scheduled = more
        if more:
            self._schedule()


def _set_result(fut: asyncio.Future, value) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


# -- the hub


class _Counters:
    """The hub's request counters: (endpoint, status, model) -> n. _Guard counts through count_request;
    the model a handler resolved is read from the request's context."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int, str], int] = {}
        self.embedding_tokens: dict[str, int] = {}

    def count_request(self, endpoint: str, status: int) -> None:
        holder = _request_model.get()
        model = (holder or {}).get("model") or ""
        with self._lock:
            key = (endpoint, int(status), model)
            self.requests[key] = self.requests.get(key, 0) + 1

    def count_embedding_tokens(self, model: str, n: int) -> None:
        with self._lock:
            self.embedding_tokens[model] = self.embedding_tokens.get(model, 0) + n


class _HubGuard(_Guard):
    """app._Guard (API key, CORS, counting, JSON 500) that also takes Anthropic's `x-api-key` header and
    answers a missing key on /v1/messages in Anthropic's error shape."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token = _request_model.set({"model": None})
        try:
            path = scope.get("path", "")
            if (self.api_key is not None and path.startswith("/v1/messages") and not self._authorized(scope)
                    and scope.get("method") != "OPTIONS"):  # fmt: skip
                response = JSONResponse(A.error_body("Missing or wrong API key: send the header 'x-api-key: <key>' "
                                                     "with the key the server was started with (--api-key).", 401),
                                        status_code=401)  # fmt: skip
                self.metrics.count_request(path, 401)
                return await response(scope, receive, send)
            return await super().__call__(scope, receive, send)
        finally:
            _request_model.reset(token)

    def _authorized(self, scope) -> bool:
        import secrets

        for name, value in scope.get("headers", ()):
            if name == b"x-api-key":
                return secrets.compare_digest(value.strip(), self._key_bytes)
        return super()._authorized(scope)


class Hub:
    """The ASGI app of a many-model server (see the module's docstring)."""

    def __init__(self, manager: ModelManager, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 energy_source: str | None = None, speculative: str | None = "auto",
                 cors_origins: list[str] | None = None, reasoning_budget: int | None = None, pooling: str = "mean"):  # fmt: skip
        if pooling not in POOLINGS:
            raise EdgeInferError(f"pooling must be 'mean' or 'last', got {pooling!r}.")
        self.manager = manager
        self.max_body_bytes = max_body_bytes
        self.energy_source = energy_source
        self.speculative = speculative
        self.cors_origins = cors_origins
        self.reasoning_budget = reasoning_budget
        self.pooling = pooling
        self.stopping = _Stopping()
        self.created = int(time.time())
        self.started = time.time()
        self.counters = _Counters()
        try:
            self.energy: EnergyClock | None = EnergyClock(energy_source)
        except Exception:
            self.energy = None
        self._app_lock = threading.Lock()
        self.asgi = _HubGuard(self._route, api_key=api_key, metrics=self.counters, cors_origins=cors_origins)
        self._get = {"/v1/models": self.models, "/models": self.models, "/health": self.health,
                     "/metrics": self.metrics_page}  # fmt: skip

    async def __call__(self, scope, receive, send):
        await self.asgi(scope, receive, send)

    def begin_shutdown(self) -> None:
        self.stopping.set()
        for e in list(self.manager.entries.values()):
            sub = e.extra.get("app")
            if sub is not None:
                sub.state.begin_shutdown()

    def close(self) -> None:
        self.manager.close()
        if self.energy is not None:
            self.energy.close()

    # -- routing
    async def _route(self, scope, receive, send):
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        request = Request(scope, receive)
        if path in self._get or path.startswith("/v1/models/"):
            if method not in ("GET", "HEAD"):
                return await self._method_not_allowed(request, "GET")(scope, receive, send)
            handler = self._get.get(path) or self.model_card_page
            return await (await handler(request))(scope, receive, send)
        if path in HUB_PATHS:
            if method != "POST":
                return await self._method_not_allowed(request, "POST")(scope, receive, send)
            return await self._post(request, scope, receive, send)
        response = self._error(path, f"There is no endpoint {method} {path} here.", 404, code="not_found")
        await response(scope, receive, send)

    def _method_not_allowed(self, request: Request, allowed: str) -> Response:
        return self._error(request.url.path, f"{request.method} is not allowed on {request.url.path}.", 405,
                           code="method_not_allowed", headers={"Allow": allowed})  # fmt: skip

    @staticmethod
    def _error(path: str, message: str, status: int, type: str | None = None, param: str | None = None,
               code: str | None = None, headers: dict | None = None) -> JSONResponse:  # fmt: skip
        """An error in the dialect of `path`: Anthropic's on /v1/messages, else OpenAI's."""
        if path.startswith("/v1/messages"):
            return JSONResponse(A.error_body(message, status), status_code=status, headers=headers)
        type = type or ("invalid_request_error" if status < 500 else "server_error")
        return JSONResponse(P.error_body(message, type, param, code), status_code=status, headers=headers)

    def _request_error(self, path: str, e: P.RequestError) -> JSONResponse:
        if path.startswith("/v1/messages"):
            return JSONResponse(A.from_request_error(e), status_code=e.status, headers=e.headers or None)
        if path in RESPONSES:
            e = R.rename_error(e)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers or None)

    async def _read_body(self, request: Request) -> bytes:
        return await read_body(request, self.max_body_bytes)

    async def _post(self, request: Request, scope, receive, send):
        path = scope["path"]
        lease: Lease | None = None
        try:
            try:
                raw = await self._read_body(request)
            except ClientDisconnect:
                return await Response(status_code=499)(scope, receive, send)
            body = P.parse_json_body(raw)
            if path in ("/models/load", "/models/unload"):
                response = await self.manage(path, body)
                return await response(scope, receive, send)
            model = body.get("model")
            if model is not None and not isinstance(model, str):
                raise P.RequestError(f"'model' must be a string, got {P._json_type(model)}.", "model")
            try:
                keep_alive = parse_keep_alive(body.get("keep_alive"))
            except ValueError as e:
                raise P.RequestError(str(e), "keep_alive") from None
            model_id = self.manager.resolve(model)
            holder = _request_model.get()
            if holder is not None:
                holder["model"] = model_id
            if path == "/v1/messages/count_tokens":  # needs the tokenizer, which a load brings
                lease = await self.manager.acquire_async(model_id, keep_alive)
                response = await self.count_tokens(lease, body)
                return await response(scope, receive, send)
            lease = await self.manager.acquire_async(model_id, keep_alive)
            if path in FORWARDED:
                return await self._forward(lease, raw, scope, receive, send)
            if path in EMBEDDINGS:
                response = await self.embeddings(lease, body)
            elif path in RESPONSES:
                response = await self.responses(request, lease, body)
            else:
                response = await self.messages(request, lease, body)
            await response(scope, receive, send)
        except P.RequestError as e:
            await self._request_error(path, e)(scope, receive, send)
        except ModelNotFound as e:
            await self._error(path, str(e), 404, param="model", code="model_not_found")(scope, receive, send)
        except ModelBusy as e:
            await self._error(path, str(e), 503, code="model_busy", headers={"Retry-After": "5"})(scope, receive, send)
        except ModelLoadError as e:
            await self._error(path, str(e), 500, code="model_load_failed")(scope, receive, send)
        except SamplingError as e:
            await self._error(path, str(e), 400)(scope, receive, send)
        finally:
            if lease is not None:
                lease.release()

    # -- the OpenAI endpoints of one model: its own app
    def sub_app(self, e: Entry):
        with self._app_lock:
            sub = e.extra.get("app")
            if sub is None:
                sub = create_app(e.llm, e.runner, api_key=None, model_name=e.spec.id, max_body_bytes=self.max_body_bytes,
                                 energy_source="estimate", speculative=self.speculative,
                                 reasoning_budget=self.reasoning_budget)  # fmt: skip
                m = sub.state.metrics
                if m.energy is not None:  # the hub measures energy once for the process
                    m.energy.close()
                    m.energy = None
                m.count_request = lambda endpoint, status: None  # the hub counts requests, by model
                e.extra["app"] = sub
            return sub

    async def _forward(self, lease: Lease, raw: bytes, scope, receive, send):
        sub = self.sub_app(lease.entry)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        headers = [(k, v) for k, v in scope.get("headers", ()) if k not in (b"origin", b"content-length")]
        headers.append((b"content-length", str(len(raw)).encode()))
        await sub({**scope, "headers": headers}, replay, send)

    # -- model management
    def card(self, status: dict) -> dict:
        e = self.manager.entries[status["id"]]
        card = {"id": status["id"], "object": "model", "created": self.created, "owned_by": "edgeinfer", **status}
        if e.llm is not None:
            card["meta"] = {"n_ctx": getattr(e.runner, "n_ctx", None) or e.llm.n_ctx, "n_vocab": e.llm.n_vocab,
                            "architecture": getattr(e.llm, "architecture", None),
                            "n_embd": getattr(getattr(getattr(e.llm, "model", None), "config", None), "n_embd", None)}  # fmt: skip
        return card

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self.card(s) for s in self.manager.status()]})

    async def model_card_page(self, request: Request) -> Response:
        name = request.url.path[len("/v1/models/"):]
        for s in self.manager.status():
            if s["id"] == name:
                return JSONResponse(self.card(s))
        return self._error("", str(ModelNotFound(name, self.manager.entries)), 404, param="model", code="model_not_found")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def manage(self, path: str, body: dict) -> Response:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise P.RequestError("'model' is required: the id of a model this server has (GET /v1/models).", "model")
        model_id = self.manager.resolve(model)
        if path == "/models/load":
            try:
                keep_alive = parse_keep_alive(body.get("keep_alive"))
            except ValueError as e:
                raise P.RequestError(str(e), "keep_alive") from None
            lease = await self.manager.acquire_async(model_id, keep_alive)
            lease.release()
            status = next(s for s in self.manager.status() if s["id"] == model_id)
            return JSONResponse({"model": model_id, "status": "loaded", "model_status": status})
        state = await run_in_threadpool(self.manager.unload, model_id)
        return JSONResponse({"model": model_id, "status": state})

    # -- metrics
    async def metrics_page(self, request: Request) -> Response:
        text = await run_in_threadpool(self.render_metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def render_metrics(self) -> str:
        from .metrics import _labels, _value

        families: dict[str, dict] = {}

        def family(name: str, kind: str, help: str) -> list:
            f = families.setdefault(name, {"kind": kind, "help": help, "samples": []})
            return f["samples"]

        with self.counters._lock:
            requests = sorted(self.counters.requests.items())
            emb = dict(self.counters.embedding_tokens)
        s = family("edgeinfer_requests_total", "counter", "HTTP requests answered, by endpoint, status code and model.")
        for (endpoint, status, model), n in requests:
            labels = {"endpoint": endpoint, "status": str(status)}
            if model:
                labels["model"] = model
            s.append(f"edgeinfer_requests_total{_labels(labels)} {n}")
        generated = 0
        status = self.manager.status()
        for st in status:
            e = self.manager.entries[st["id"]]
            sub, runner = e.extra.get("app"), e.runner
            if st["state"] != "loaded" or runner is None:
                continue
            stats = runner.stats()
            generated += stats.get("generated_tokens_total", 0)
            if sub is None:
                sub = self.sub_app(e)
            _merge_page(families, sub.state.metrics.render(stats), st["id"],
                        skip={"edgeinfer_requests_total", "edgeinfer_uptime_seconds"})  # fmt: skip
        for name, kind, help, key in (
            ("edgeinfer_model_loaded", "gauge", "1 when the model is loaded, else 0.", None),
            ("edgeinfer_model_memory_bytes", "gauge", "Memory a loaded model holds (weights and KV cache).", "memory_bytes"),
            ("edgeinfer_model_load_seconds", "gauge", "How long the model's latest load took.", "load_seconds"),
            ("edgeinfer_model_active_requests", "gauge", "Requests holding the model now.", "active_requests"),
        ):  # fmt: skip
            samples = family(name, kind, help)
            for st in status:
                v = (1 if st["state"] == "loaded" else 0) if key is None else (st.get(key) or 0)
                samples.append(f"{name}{_labels({'model': st['id']})} {_value(v)}")
        samples = family("edgeinfer_embedding_tokens_total", "counter", "Tokens embedded (/v1/embeddings).")
        for model, n in sorted(emb.items()):
            samples.append(f"edgeinfer_embedding_tokens_total{_labels({'model': model})} {n}")
        if self.energy is not None:
            joules = self.energy.joules()
            labels = {"source": self.energy.source, "estimated": "true" if self.energy.estimated else "false"}
            family("edgeinfer_energy_joules_total", "counter", f"Energy since the server started ({self.energy.note}).").append(
                f"edgeinfer_energy_joules_total{_labels(labels)} {_value(joules)}")  # fmt: skip
            family("edgeinfer_tokens_per_joule", "gauge",
                   "Generated tokens (of the loaded models) per joule since the server started.").append(
                f"edgeinfer_tokens_per_joule{_labels(labels)} {_value(generated / joules if joules > 0 else 0.0)}")  # fmt: skip
        family("edgeinfer_uptime_seconds", "gauge", "Seconds since the server started.").append(
            f"edgeinfer_uptime_seconds {_value(time.time() - self.started)}")  # fmt: skip
        out = []
        for name, f in families.items():
            out += [f"# HELP {name} {f['help']}", f"# TYPE {name} {f['kind']}", *f["samples"]]
        return "\n".join(out) + "\n"

    # -- embeddings
    async def embeddings(self, lease: Lease, body: dict) -> Response:
        llm = lease.llm
        n_vocab = llm.n_vocab
        inp = body.get("input")
        if inp is None:
            raise P.RequestError("'input' is required: a string, an array of strings, or token ids.", "input")
        if isinstance(inp, str):
            items: list = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(t, int) and not isinstance(t, bool) for t in inp):
            items = [inp]
        elif isinstance(inp, list) and inp:
            items = inp
        else:
            raise P.RequestError(f"'input' must be a string, an array of strings or of token ids, got "
                                 f"{P._json_type(inp) if inp != [] else 'an empty array'}.", "input")  # fmt: skip
        if len(items) > MAX_EMBED_INPUTS:
            raise P.RequestError(f"'input' holds {len(items)} inputs; at most {MAX_EMBED_INPUTS} are allowed.", "input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise P.RequestError(f"'encoding_format' must be \"float\" or \"base64\", got {fmt!r}.", "encoding_format")
        pooling = body.get("pooling") or self.pooling
        if pooling not in POOLINGS:
            raise P.RequestError(f"'pooling' must be \"mean\" or \"last\", got {pooling!r}.", "pooling")
        n_embd = llm.model.config.n_embd
        dims = P._integer(body, "dimensions", None, lo=1)
        if dims is not None and dims != n_embd:
            raise P.RequestError(f"'dimensions' = {dims}: this model's embeddings have {n_embd} dimensions "
                                 "(leave it out).", "dimensions")  # fmt: skip
        texts = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                texts.append((i, item))
            elif isinstance(item, list) and item:
                P._token_ids(item, "input", n_vocab)
            else:
                raise P.RequestError(f"input[{i}] must be a string or a non-empty array of token ids, got "
                                     f"{P._json_type(item)}.", "input")  # fmt: skip
        ids: list = list(items)
        if texts:
            encoded = await run_in_threadpool(lambda: [llm.tokenize(t) for _, t in texts])
            for (i, _), t in zip(texts, encoded):
                ids[i] = t
        n_ctx = getattr(lease.runner, "n_ctx", None) or llm.n_ctx
        for i, t in enumerate(ids):
            if not t:
                raise P.RequestError(f"input[{i}] has no tokens; an embedding needs at least one.", "input")
            if len(t) > n_ctx:
                raise P.RequestError(f"input[{i}] is {len(t)} tokens long, more than the context of {n_ctx}; shorten "
                                     "it (inputs are never truncated).", "input", code="context_length_exceeded")  # fmt: skip
        batcher = lease.entry.extra.get("embed")
        if batcher is None:
            batcher = lease.entry.extra["embed"] = EmbedBatcher(llm, lease.runner)
        try:
            vecs = await batcher.embed(ids, pooling)
        except (ContextFullError, EdgeInferError) as e:
            raise P.RequestError(str(e), "input") from None
        n_tokens = sum(len(t) for t in ids)
        self.counters.count_embedding_tokens(lease.id, n_tokens)
        data = []
        for i, v in enumerate(vecs):
            emb = base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if fmt == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return JSONResponse({"object": "list", "data": data, "model": lease.id,
                             "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})  # fmt: skip

    # -- chat-shaped dialects (Responses, Anthropic Messages): one path to the runner
    async def _plan(self, lease: Lease, chat_body: dict):
        """A chat-completions body (the dialect's translation) -> (GenerationRequest, ChatPlan), validated
        by protocol.parse_chat_request and toolcalls.plan_chat, as /v1/chat/completions does."""
        from ..engine.constrain import GrammarError
        from ..tokenizer.chat import ChatTemplateError
        from ..toolcalls import plan_chat

        llm = lease.llm
        req = P.parse_chat_request(chat_body, llm.n_vocab)
        budget = req.reasoning_budget if req.reasoning_budget is not None else self.reasoning_budget
        try:
            plan = await run_in_threadpool(plan_chat, llm.chat_template, llm.tokenizer, req.messages, req.tools,
                                           req.tool_choice, req.parallel_tool_calls, req.grammar, budget)  # fmt: skip
        except ChatTemplateError as e:
            raise P.RequestError(f"The model's chat template refused the messages: {e}", "messages") from None
        except GrammarError as e:
            raise P.RequestError(str(e), e.field or "tools", code="invalid_grammar") from None
        return req, plan

    def _submit(self, lease: Lease, req, plan):
        runner = lease.runner
        ids = plan.prompt_ids
        try:
            runner.check_prompt(ids)
        except PromptTooLongError as e:
            raise P.RequestError(str(e), "messages", code="context_length_exceeded") from None
        except InvalidPromptError as e:
            raise P.RequestError(str(e), "messages") from None
        spec = self.speculative if req.speculative == "default" else req.speculative
        try:
            runner.check_speculative(spec)
        except EdgeInferError as e:
            raise P.RequestError(str(e), "speculative") from None
        n_ctx = getattr(runner, "n_ctx", None) or lease.llm.n_ctx
        room = n_ctx - len(ids)
        max_tokens = room if req.max_tokens is None else min(req.max_tokens, room)
        try:
            return runner.submit(ids, req.params, max_tokens, req.stop, loop=asyncio.get_running_loop(), speculative=spec,
                                 grammar=plan.grammar, logprobs=req.logprobs)  # fmt: skip
        except PromptTooLongError as e:
            raise P.RequestError(str(e), "messages", code="context_length_exceeded") from None
        except QueueFullError as e:
            retry = str(max(1, math.ceil(getattr(e, "retry_after_s", 1))))
            raise P.RequestError(f"The server is busy: {e}", status=503, type="server_error", code="queue_full",
                                 headers={"Retry-After": retry}) from None  # fmt: skip

    def _observe(self, lease: Lease, fin: Finish) -> None:
        sub = lease.entry.extra.get("app")
        if sub is not None and fin.n_generated > 0 and fin.reason not in ("error", "cancelled"):
            sub.state.metrics.observe_ttft(fin.ttft_s)

    async def _reply(self, request: Request, lease: Lease, handle, plan):
        """The whole reply: (ChatResult, Finish), or an error Response (client gone, shutdown, failure)."""
        pieces, fin = [], None
        try:
            async for event in _guarded(handle.events(), request.receive, handle, self.stopping):
                if isinstance(event, Finish):
                    fin = event
                else:
                    pieces.append(event)
        except _ClientGone:
            return None, Response(status_code=499)
        except _ShuttingDown:
            return None, self._error(request.url.path, SHUTDOWN_MESSAGE, 503, code="shutting_down")
        self._observe(lease, fin)
        if fin.reason == "error":
            return None, self._error(request.url.path, f"Generation failed: {fin.error}", 500)
        parser = plan.parser()
        parser.feed("".join(pieces))
        parser.finish()
        return (parser.result(fin.reason), fin), None

    async def _deltas(self, lease: Lease, handle, plan) -> AsyncIterator:
        """The reply as it comes: ("delta", ChatDelta) items, then ("end", ChatResult, Finish)."""
        parser = plan.parser()
        async for event in handle.events():
            if isinstance(event, Finish):
                self._observe(lease, event)
                if event.reason in ("error", "cancelled"):
                    yield ("failed", event)
                    return
                for d in parser.finish():
                    yield ("delta", d)
                yield ("end", parser.result(event.reason), event)
                return
            for d in parser.feed(event):
                yield ("delta", d)

    async def responses(self, request: Request, lease: Lease, body: dict) -> Response:
        chat_body = R.to_chat_body(body)
        req, plan = await self._plan(lease, chat_body)
        stream = P._boolean(body, "stream", False)
        handle = self._submit(lease, req, plan)
        rid, created = f"resp_{os.urandom(12).hex()}", int(time.time())
        if not stream:
            out, err = await self._reply(request, lease, handle, plan)
            if err is not None:
                return err
            res, fin = out
            return JSONResponse(R.response_object(rid, created, lease.id, body, R.output_items(res),
                                                  R.status_of(res.finish_reason), R.usage(fin.n_prompt, fin.n_generated)))  # fmt: skip
        rs = R.ResponseStream(rid, created, lease.id, body)

        async def events():
            yield rs.start()
            async for item in self._deltas(lease, handle, plan):
                if item[0] == "delta":
                    data = rs.delta(item[1])
                    if data:
                        yield data
                elif item[0] == "end":
                    res, fin = item[1], item[2]
                    yield rs.finish(res.finish_reason, fin.n_prompt, fin.n_generated)
                elif item[1].reason == "error":
                    yield rs.error(f"Generation failed: {item[1].error}")

        return _EventStream(events(), handle, self.stopping)

    async def messages(self, request: Request, lease: Lease, body: dict) -> Response:
        chat_body = A.to_chat_body(body)
        req, plan = await self._plan(lease, chat_body)
        stream = P._boolean(body, "stream", False)
        handle = self._submit(lease, req, plan)
        mid = f"msg_{os.urandom(12).hex()}"
        if not stream:
            out, err = await self._reply(request, lease, handle, plan)
            if err is not None:
                return err
            res, fin = out
            return JSONResponse(A.message_object(mid, lease.id, res, fin.n_prompt, fin.n_generated))
        ms = A.MessageStream(mid, lease.id, len(plan.prompt_ids))

        async def events():
            yield ms.start()
            async for item in self._deltas(lease, handle, plan):
                if item[0] == "delta":
                    data = ms.delta(item[1])
                    if data:
                        yield data
                elif item[0] == "end":
                    res, fin = item[1], item[2]
                    yield ms.finish(res.finish_reason, fin.n_generated)
                elif item[1].reason == "error":
                    yield ms.error(f"Generation failed: {item[1].error}")

        return _EventStream(events(), handle, self.stopping)

    async def count_tokens(self, lease: Lease, body: dict) -> Response:
        req, plan = await self._plan(lease, A.to_chat_body(body, count_only=True))
        return JSONResponse({"input_tokens": len(plan.prompt_ids)})


def _merge_page(families: dict, text: str, model: str, skip: set[str] = frozenset()) -> None:
    """Add one model's Prometheus page to `families`, each sample labelled model=... (unless it has one)."""
    name = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help = line[len("# HELP "):].partition(" ")
            if name not in skip:
                families.setdefault(name, {"kind": "untyped", "help": help, "samples": []})
            continue
        if line.startswith("# TYPE "):
            _, _, n, kind = line.split(" ", 3)
            if n in families and not families[n]["samples"]:
                families[n]["kind"] = kind
            continue
        if not line or name is None or name in skip:
            continue
        metric, brace, rest = line.partition("{")
        label = f'model="{model}"'
        if brace:
            if 'model="' not in rest.split("}", 1)[0]:
                line = f"{metric}{{{label},{rest}"
        else:
            metric, _, value = line.partition(" ")
            line = f"{metric}{{{label}}} {value}"
        families[name]["samples"].append(line)


def create_hub(manager: ModelManager, **kw) -> Hub:
    return Hub(manager, **kw)


# -- serve


def serve_models(models: Iterable[str] = (), models_dir: str | None = None, aliases: Iterable[str | None] = (),
                 host: str = "127.0.0.1", port: int = 8080, parallel: int = 1, ctx_size: int = 4096,
                 api_key: str | None = None, threads: int | None = None, backend="auto", max_queue: int = 16,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, energy_source: str | None = None,
                 kv_size: int | None = None, draft=None, speculative: str | None = "auto",
                 kv_type: str = DEFAULT_KV_TYPE, print_fn=print, cors_origins: list[str] | None = None,
                 reasoning_budget: int | None = None, keep_alive=DEFAULT_KEEP_ALIVE_S,
                 max_models: int = DEFAULT_MAX_MODELS, max_memory: int | None = None, pooling: str = "mean",
                 preload: bool = True) -> int:  # fmt: skip
    """Serve every model given (paths, registry names) and found in models_dir, each loaded on first use
    (the first one given is loaded at start when `preload`), until Ctrl-C or SIGTERM."""
    check_serve_args(parallel=parallel, ctx_size=ctx_size, max_queue=max_queue, max_body_bytes=max_body_bytes,
                     kv_size=kv_size, port=port, api_key=api_key, speculative=speculative, draft=draft,
                     max_models=max_models)
    if pooling not in POOLINGS:
        raise EdgeInferError(f"--pooling must be mean or last, got {pooling!r}.")
    try:
        keep_alive_s = parse_keep_alive(keep_alive)
    except ValueError as e:
        raise EdgeInferError(f"--keep-alive: {e}.") from None
    models = [str(m) for m in models]
    specs = specs_from(models, models_dir, aliases)
    if not specs:
        raise EdgeInferError("No models to serve: give MODEL (a path or a registry name) or --models-dir DIR.")
    if draft is not None and len(specs) > 1:
        raise EdgeInferError("--draft works with one model; serve the others from another server.")
    sock = bind_socket(host, port)
    cors_origins = cors_from_env(cors_origins)
    warn_if_open(host, api_key, "the models")
    tune_allocator()  # an unloaded model's memory goes back to the system
    loader = make_loader(ctx_size, parallel, max_queue, kv_size, threads, backend, kv_type, draft)
    manager = ModelManager(specs, loader, keep_alive=keep_alive_s, max_models=max_models, max_memory=max_memory,
                           max_waiting=max_queue)  # the queue's rule: --max-queue requests may wait for a load  # fmt: skip
    first = None
    if preload and models:  # the first model given loads now: a bad file fails here, not at the first request
        first = specs[0].id
        level = log.level
        log.setLevel(logging.ERROR)  # a bad file's warning would repeat the error printed below
        try:
            manager.load(first)
        except ModelLoadError as e:
            sock.close()
            raise EdgeInferError(str(e)) from None
        finally:
            log.setLevel(level)
    manager.start()
    hub = create_hub(manager, api_key=api_key, max_body_bytes=max_body_bytes, energy_source=energy_source,
                     speculative=speculative, cors_origins=cors_origins, pooling=pooling,
                     reasoning_budget=None if reasoning_budget is None or reasoning_budget < 0 else reasoning_budget)  # fmt: skip
    ids = ", ".join(s.id for s in specs[:8]) + (f" and {len(specs) - 8} more" if len(specs) > 8 else "")
    kv = f", KV cache {_kv_summary(manager.entries[first].runner)}" if first is not None else ""
    ka = "forever" if keep_alive_s < 0 else f"{keep_alive_s:g} s"
    banner = (f"(parallel {parallel}, context {ctx_size}{kv}; up to {max_models} loaded, keep-alive {ka}"
              f"{', API key required' if api_key else ''}); Ctrl-C stops")  # fmt: skip
    return run_server(hub, sock, ids, banner, hub.begin_shutdown, hub.close, print_fn)


__all__ = ["EmbedBatcher", "Hub", "create_hub", "make_loader", "serve_models"]
