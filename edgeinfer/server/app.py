"""The OpenAI-compatible HTTP server: a Starlette app over a runner (`edgeinfer.engine.runner`).

    app = create_app(llm, runner, api_key=None, model_name="smollm2-135m")   # any ASGI server runs it
    serve("smollm2-135m", port=8080, parallel=4)                            # load, start, listen (uvicorn)

The app never generates text itself: it validates a request, tokenizes it, submits it to the runner
and turns the runner's events (text pieces, then one Finish) into OpenAI's JSON or server-sent events.
Everything that can be refused is refused before the response starts (so a stream never begins
with an error): bad fields (400), a prompt longer than the context (400), a full queue (503 with
Retry-After). A client that goes away cancels its request, which frees its sequence at the runner's
next step.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..engine.spec_policy import MODES
from ..engine.runner import Finish, InvalidPromptError, PromptTooLongError, QueueFullError
from ..engine.sampling import SamplingError
from ..errors import EdgeInferError
from ..nn.kv import DEFAULT_KV_TYPE
from ..tokenizer.chat import ChatTemplateError
from . import protocol as P
from .metrics import Metrics

log = logging.getLogger("edgeinfer.server")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
BODY_IDLE_S = 30.0  # the most a request body may pause between two chunks
BODY_TIMEOUT_S = 120.0  # the most a whole request body may take to arrive
HEADER_TIMEOUT_S = 30.0  # the most a connection may take to send a request's headers (slowloris)
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 1000  # connections and requests at once; uvicorn answers 503 beyond
PUBLIC_PATHS = ("/health",)
KNOWN_PATHS = {
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize",
    "/chat/completions", "/completions", "/models",
    # the many-model server's own (server/multi.py)
    "/v1/embeddings", "/embeddings", "/v1/responses", "/responses", "/v1/messages", "/v1/messages/count_tokens",
    "/models/load", "/models/unload",
    "/replicas",  # the Ray Serve ingress's (server/ray_serve.py)
}  # fmt: skip


def _error(message: str, status: int, type: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse(P.error_body(message, type, param, code), status_code=status, headers=headers)


def _from_request_error(e: P.RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers or None)


class _Guard:
    """Outermost layer: the API key, request counting by endpoint and status, and a JSON 500 for any
    exception that escapes a handler (the server keeps serving)."""

    def __init__(self, app, api_key: str | None, metrics: Metrics, cors_origins: list[str] | None = None):
        self.app = app
        self.api_key = api_key
        self._key_bytes = api_key.encode("utf-8") if api_key is not None else b""
        self.metrics = metrics
        self.cors_origins = [o.rstrip("/") for o in cors_origins or ()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"
        if path.startswith("/v1/models/"):
            endpoint = "/v1/models/{model}"
        status = {"code": None}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        origin = _header(scope, b"origin")
        if origin is not None:
            if not origin_allowed(origin, self.cors_origins):
                response = _error(f"Cross-origin requests from {origin[:200]!r} are refused: this server allows only "
                                  "local origins (localhost, 127.0.0.1, [::1]) unless started with "
                                  "--cors-origin ORIGIN (or EDGEINFER_CORS_ORIGINS=ORIGIN,... in its environment).",
                                  403, code="origin_not_allowed")  # fmt: skip
                self.metrics.count_request(endpoint, 403)
                return await response(scope, receive, send)
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
                asked = _header(scope, b"access-control-request-headers") or "authorization, content-type"
                await send({"type": "http.response.start", "status": 204, "headers": [
                    *cors, (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                    (b"access-control-allow-headers", asked.encode("latin-1")),
                    (b"access-control-max-age", b"600")]})  # fmt: skip
                await send({"type": "http.response.body", "body": b""})
                self.metrics.count_request(endpoint, 204)
                return
            inner_send = send

            async def send(message):  # noqa: F811 (the CORS headers on every response to this origin)
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), *cors]}
                await inner_send(message)

        try:
            if self.api_key is not None and path not in PUBLIC_PATHS and not self._authorized(scope):
                response = _error("Missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                                  "key the server was started with (--api-key).", 401, code="invalid_api_key",
                                  headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
                await response(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        except Exception as e:
            log.exception("unexpected error serving %s %s", scope.get("method"), path)
            if status["code"] is None:
                response = _error(f"Internal server error ({type(e).__name__}: {e}); the server is still running.",
                                  500, type="server_error")  # fmt: skip
                await response(scope, receive, send_counted)
        finally:
            self.metrics.count_request(endpoint, status["code"] or 500)

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                # bytes on both sides: a header of any bytes is compared, never a TypeError (non-ASCII str)
                return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self._key_bytes)
        return False


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """Whether a browser page at `origin` may call this server: any listed origin ("*": every one), else
    only local pages (http(s)://localhost, 127.0.0.1 or [::1], any port)."""
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    if allowed:
        return False
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return False
    host = rest.rsplit(":", 1)[0] if not rest.endswith("]") else rest
    return host in LOCAL_HOSTS


class _BodyAbandoned(Exception):
    """The client disconnected while it was still sending its request body."""


class _ClientGone(Exception):
    """The client disconnected before its answer was complete."""


class _ShuttingDown(Exception):
    """The server is stopping (Ctrl-C, SIGTERM): running requests end now."""


class _Stopping:
    """Set once when the server begins to stop; `set()` may be called from any thread or a signal handler."""

    def __init__(self):
        self.is_set = False
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        if self.is_set:
            return
        await self._event.wait()

    def set(self) -> None:
        self.is_set = True
        if self._loop is not None and self._event is not None:
            try:
                self._loop.call_soon_threadsafe(self._event.set)
            except RuntimeError:  # the loop is closed already
                pass


async def _guarded(items: AsyncIterator, receive, handle, stopping: _Stopping) -> AsyncIterator:
    """The items of `items` until they end, or until the client goes away (_ClientGone) or the server
    begins to stop (_ShuttingDown): then the request is cancelled (its sequence freed at the runner's
    next step) at once, even while it still waits in the queue. (After the body is read, an ASGI
    server's receive() returns only http.disconnect.)"""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def interrupted() -> type[Exception]:
        gone, stop = asyncio.ensure_future(disconnected()), asyncio.ensure_future(stopping.wait())
        try:
            done, _ = await asyncio.wait((gone, stop), return_when=asyncio.FIRST_COMPLETED)
            return _ShuttingDown if stop in done else _ClientGone
        finally:
            gone.cancel()
            stop.cancel()

    watcher = asyncio.ensure_future(interrupted())
    it = aiter(items)
    nxt = None
    try:
        while True:
            nxt = asyncio.ensure_future(anext(it))
            await asyncio.wait((nxt, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                raise watcher.result()
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        handle.cancel()  # a no-op for a finished request
        watcher.cancel()
        if nxt is not None and not nxt.done():  # let the reader stop before anyone closes `items`
            nxt.cancel()
            await asyncio.wait((nxt,))


class _EventStream(Response):
    """Server-sent events from an async iterator of bytes, tied to a runner handle: a client that goes
    away (seen as http.disconnect, or as a failed send) cancels the handle; a server that stops ends the
    stream with an error event."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], handle, stopping: _Stopping):
        self.chunks = chunks
        self.handle = handle
        self.stopping = stopping
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        guarded = _guarded(self.chunks, receive, self.handle, self.stopping)
        try:
            try:
                async for chunk in guarded:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except _ShuttingDown:
                event = P.sse(P.error_body(SHUTDOWN_MESSAGE, "server_error", code="shutting_down"))
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (_ClientGone, OSError):  # gone: seen as http.disconnect, or as a send that failed
            self.handle.cancel()
        finally:
            await guarded.aclose()
            await self.chunks.aclose()


SHUTDOWN_MESSAGE = "The server is shutting down; this reply was cut short. Try again when it is back."


async def read_body(request: Request, max_body_bytes: int) -> bytes:
    """A request's body, at most max_body_bytes (413 past it: by Content-Length before reading, or as it
    arrives), within BODY_IDLE_S between chunks and BODY_TIMEOUT_S in all (408): a client that sends its
    body slowly, or not at all, holds a connection only so long. ClientDisconnect when it leaves."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > max_body_bytes:
        raise P.RequestError(f"The request body is {int(length)} bytes; this server takes at most "
                             f"{max_body_bytes}.", status=413, code="request_too_large")  # fmt: skip
    chunks, n = [], 0
    body = aiter(request.stream())
    deadline = time.monotonic() + BODY_TIMEOUT_S
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                chunk = await asyncio.wait_for(anext(body), timeout=max(0.0, min(BODY_IDLE_S, left)))
            except StopAsyncIteration:
                break
            n += len(chunk)
            if n > max_body_bytes:
                raise P.RequestError(f"The request body is over {max_body_bytes} bytes, the most this server "
                                     "takes.", status=413, code="request_too_large")  # fmt: skip
            chunks.append(chunk)
    except asyncio.TimeoutError:
        raise P.RequestError(f"The request body did not arrive in time (at most {BODY_IDLE_S:g} s between "
                             f"chunks, {BODY_TIMEOUT_S:g} s in all).", status=408, code="request_timeout") from None  # fmt: skip
    return b"".join(chunks)


def bind_socket(host: str, port) -> socket.socket:
    """A socket bound to host:port (EdgeInferError saying what to change when it cannot be)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as e:
        sock.close()
        raise EdgeInferError(f"Cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host.") \
            from None  # fmt: skip
    return sock


def cors_from_env(cors_origins: list[str] | None) -> list[str]:
    """cors_origins, or when None, $EDGEINFER_CORS_ORIGINS (comma-separated)."""
    if cors_origins is not None:
        return cors_origins
    return [o.strip() for o in os.environ.get("EDGEINFER_CORS_ORIGINS", "").split(",") if o.strip()]


def create_app(llm, runner, api_key: str | None = None, model_name: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, energy_source: str | None = None,
               n_ctx: int | None = None, speculative: str | None = "auto",
               cors_origins: list[str] | None = None, reasoning_budget: int | None = None) -> Starlette:  # fmt: skip
    """The ASGI app. `runner` must be started by the caller (serve() does). `n_ctx`: the context of
    one sequence (default: the runner's, else the model's). `speculative`: what a request that does not
    say gets ("auto": the draft model when one is loaded, "draft", "ngram", or None). `cors_origins`:
    the browser origins that may call it ("*": any); default only local pages (localhost, 127.0.0.1,
    [::1]); a request with another Origin is refused (403)."""
    model_name = model_name or Path(str(getattr(llm, "path", "model"))).stem
    n_ctx = int(n_ctx or getattr(runner, "n_ctx", None) or llm.n_ctx)
    n_vocab = llm.n_vocab
    metrics = Metrics(model_name, energy_source)
    stopping = _Stopping()
    created = int(time.time())

    async def read_json(request: Request) -> dict:
        try:
            return P.parse_json_body(await read_body(request, max_body_bytes))
        except ClientDisconnect:
            raise _BodyAbandoned() from None

    def handles_errors(fn):
        async def endpoint(request: Request):
            try:
                return await fn(request)
            except P.RequestError as e:
                return _from_request_error(e)
            except _BodyAbandoned:  # the client left while sending its body: nobody reads an answer
                return Response(status_code=499)
            except SamplingError as e:  # the engine's own checks, should ours ever miss one
                return _error(str(e), 400, param=str(e).split(" ")[0] or None)

        endpoint.__name__ = fn.__name__
        return endpoint

    # -- generation

    async def generate(request: Request, req: P.GenerationRequest, ids: list[int], echo_text: str = "", plan=None):
        param = "messages" if req.kind == "chat" else "prompt"
        try:
            runner.check_prompt(ids)
        except PromptTooLongError as e:
            raise P.RequestError(str(e), param, code="context_length_exceeded" if ids else None) from None
        except InvalidPromptError as e:
            raise P.RequestError(str(e), param) from None
        try:
            runner.check_speculative(speculative if req.speculative == "default" else req.speculative)
        except EdgeInferError as e:
            raise P.RequestError(str(e), "speculative") from None
        room = n_ctx - len(ids)
        max_tokens = room if req.max_tokens is None else min(req.max_tokens, room)
        spec = speculative if req.speculative == "default" else req.speculative
        try:
            handle = runner.submit(ids, req.params, max_tokens, req.stop, loop=asyncio.get_running_loop(),
                                   speculative=spec, grammar=plan.grammar if plan is not None else req.grammar,
                                   logprobs=req.logprobs)  # fmt: skip
        except PromptTooLongError as e:
            raise P.RequestError(str(e), param, code="context_length_exceeded") from None
        except QueueFullError as e:
            retry = str(max(1, math.ceil(getattr(e, "retry_after_s", 1))))
            raise P.RequestError(f"The server is busy: {e}", status=503, type="server_error", code="queue_full",
                                 headers={"Retry-After": retry}) from None  # fmt: skip
        rid = P.new_id("chatcmpl" if req.kind == "chat" else "cmpl")
        t = P.now()
        if req.stream:
            return _EventStream(stream(req, handle, rid, t, echo_text, plan), handle, stopping)
        return await complete(request, req, handle, rid, t, echo_text, plan)

    def observe(fin: Finish) -> None:
        if fin.n_generated > 0 and fin.reason not in ("error", "cancelled"):
            metrics.observe_ttft(fin.ttft_s)

    async def complete(request: Request, req: P.GenerationRequest, handle, rid: str, t: int, echo_text: str,
                       plan=None):  # fmt: skip
        pieces, fin = [], None
        try:
            async for event in _guarded(handle.events(), request.receive, handle, stopping):
                if isinstance(event, Finish):
                    fin = event
                else:
                    pieces.append(event)
        except _ClientGone:
            return Response(status_code=499)  # nobody reads it; /metrics counts it as "client closed"
        except _ShuttingDown:
            return _error(SHUTDOWN_MESSAGE, 503, type="server_error", code="shutting_down")
        observe(fin)
        if fin.reason == "error":
            return _error(f"Generation failed: {fin.error}", 500, type="server_error")
        text = echo_text + "".join(pieces)
        tok = getattr(llm, "tokenizer", None)  # for logprobs only
        if req.kind == "chat":
            parser = plan.parser()
            parser.feed(text)
            parser.finish()
            res = parser.result(fin.reason)
            calls = [c.to_openai() for c in res.tool_calls] or None
            body = P.chat_response(rid, t, model_name, res.text, res.finish_reason, fin.n_prompt, fin.n_generated,
                                   calls, res.reasoning, P.chat_logprobs(tok, fin.logprobs))  # fmt: skip
        else:
            body = P.completion_response(rid, t, model_name, text, fin.reason, fin.n_prompt, fin.n_generated,
                                         P.completion_logprobs(tok, fin.logprobs, len(echo_text)))  # fmt: skip
        return JSONResponse(body)

    async def stream(req: P.GenerationRequest, handle, rid: str, t: int, echo_text: str,
                     plan=None) -> AsyncIterator[bytes]:  # fmt: skip
        inc = req.include_usage
        tok = getattr(llm, "tokenizer", None)  # for logprobs only
        sent = 0  # log-probabilities sent so far
        offset = len(echo_text)

        def new_logprobs(fin=None):
            nonlocal sent
            if req.logprobs is None:
                return None
            held = fin.logprobs if fin is not None and fin.logprobs is not None else handle.live_logprobs
            new = list((held or [])[sent:])
            sent += len(new)
            return new

        if req.kind == "chat":
            parser = plan.parser()
            pending: list = []

            def chunks(text, reason=None, fin=None):
                nonlocal pending
                lp = new_logprobs(fin)
                if lp:
                    pending.extend(lp)
                deltas = parser.feed(text) if text else []
                if reason is not None:
                    deltas += parser.finish()
                out = []
                for d in deltas:
                    delta = {}
                    if d.content:
                        delta["content"] = d.content
                    if d.reasoning:
                        delta["reasoning_content"] = d.reasoning
                    if d.tool_call is not None:
                        delta["tool_calls"] = [d.tool_call.to_openai()]
                    lps = P.chat_logprobs(tok, pending) if pending else None
                    pending = []
                    out.append(P.sse(P.chat_chunk(rid, t, model_name, delta, include_usage=inc, logprobs=lps)))
                if reason is not None:
                    lps = P.chat_logprobs(tok, pending) if pending else None
                    pending = []
                    final = parser.result(reason).finish_reason
                    out.append(P.sse(P.chat_chunk(rid, t, model_name, {}, final, include_usage=inc, logprobs=lps)))
                return b"".join(out)

            def chunk(text, reason=None, fin=None):
                return chunks(text, reason, fin)

            def usage_chunk(u):
                return P.sse(P.chat_chunk(rid, t, model_name, None, usage_=u, include_usage=True))

            yield P.sse(P.chat_chunk(rid, t, model_name, {"role": "assistant", "content": ""}, include_usage=inc))
        else:
            def chunk(text, reason=None, fin=None):
                nonlocal offset
                lps = P.completion_logprobs(tok, new_logprobs(fin), offset) if req.logprobs is not None else None
                offset += len(text)
                return P.sse(P.completion_chunk(rid, t, model_name, text, reason, include_usage=inc, logprobs=lps))

            def usage_chunk(u):
                return P.sse(P.completion_chunk(rid, t, model_name, None, usage_=u, include_usage=True))

            if echo_text:
                yield P.sse(P.completion_chunk(rid, t, model_name, echo_text, include_usage=inc))
        fin = None
        try:
            async for event in handle.events():
                if isinstance(event, Finish):
                    fin = event
                else:
                    data = chunk(event)
                    if data:
                        yield data
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:  # the stream has begun: end it with an error event, never a cut connection
            log.exception("unexpected error in a stream")
            handle.cancel()
            yield P.sse(P.error_body(f"Internal server error ({type(e).__name__}); the server is still running.",
                                     "server_error"))  # fmt: skip
            yield P.sse("[DONE]")
            return
        observe(fin)
        if fin.reason == "cancelled":
            return
        if fin.reason == "error":
            yield P.sse(P.error_body(f"Generation failed: {fin.error}", "server_error"))
            return
        yield chunk("", fin.reason, fin)
        if inc:
            yield usage_chunk(P.usage(fin.n_prompt, fin.n_generated))
        yield P.sse("[DONE]")

    @handles_errors
    async def chat_completions(request: Request):
        req = P.parse_chat_request(await read_json(request), n_vocab)
        from ..engine.constrain import GrammarError
        from ..toolcalls import plan_chat

        try:  # the template renders the tools and tool results; the grammar makes a required call valid
            if getattr(llm, "chat_template", None) is None:  # a model object without one (tests' fakes)
                from ..toolcalls import ChatPlan

                ids = await run_in_threadpool(llm.tokenize_chat, req.messages)
                return await generate(request, req, ids, plan=ChatPlan("", ids, req.grammar, "generic", [], "none", False))
            plan = await run_in_threadpool(plan_chat, llm.chat_template, llm.tokenizer, req.messages, req.tools,
                                           req.tool_choice, req.parallel_tool_calls, req.grammar,
                                           req.reasoning_budget if req.reasoning_budget is not None
                                           else reasoning_budget, req.chat_template_kwargs)  # fmt: skip
        except ChatTemplateError as e:
            raise P.RequestError(f"The model's chat template refused the messages: {e}", "messages") from None
        except GrammarError as e:  # ToolError too
            raise P.RequestError(str(e), e.field or "tools", code="invalid_grammar") from None
        return await generate(request, req, plan.prompt_ids, plan=plan)

    @handles_errors
    async def completions(request: Request):
        req = P.parse_completion_request(await read_json(request), n_vocab)
        if isinstance(req.prompt, str):
            ids = await run_in_threadpool(llm.tokenize, req.prompt, True, True)
            echo = req.prompt if req.echo else ""
        else:
            ids = req.prompt
            echo = (await run_in_threadpool(llm.detokenize, ids)) if req.echo else ""
        return await generate(request, req, ids, echo)

    # -- everything else

    def model_card() -> dict:
        return {
            "id": model_name, "object": "model", "created": created, "owned_by": "edgeinfer",
            "meta": {"n_ctx": n_ctx, "n_vocab": n_vocab, "architecture": getattr(llm, "architecture", None)},
        }  # fmt: skip

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: Request):
        name = request.path_params["model"]
        if name != model_name:
            return _error(f"The model {name!r} does not exist here; this server serves {model_name!r}.", 404,
                          param="model", code="model_not_found")  # fmt: skip
        return JSONResponse(model_card())

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def metrics_page(request: Request):
        text = await run_in_threadpool(lambda: metrics.render(runner.stats()))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @handles_errors
    async def tokenize(request: Request):
        body = await read_json(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise P.RequestError(f"'content' must be a string, got {P._json_type(content)}.", "content")
        add_special = P._boolean(body, "add_special", False)
        parse_special = P._boolean(body, "parse_special", True)
        tokens = await run_in_threadpool(llm.tokenize, content, add_special, parse_special)
        return JSONResponse({"tokens": tokens})

    @handles_errors
    async def detokenize(request: Request):
        tokens = P.parse_tokens(await read_json(request), n_vocab)
        return JSONResponse({"content": await run_in_threadpool(llm.detokenize, tokens)})

    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return _error(f"There is no endpoint {request.method} {request.url.path} here.", 404, code="not_found")
        if exc.status_code == 405:
            return _error(f"{request.method} is not allowed on {request.url.path}.", 405,
                          code="method_not_allowed", headers=dict(exc.headers or {}))  # fmt: skip
        return _error(str(exc.detail), exc.status_code)

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.metrics = metrics
    app.state.runner = runner
    app.state.llm = llm
    app.state.model_name = model_name
    app.state.begin_shutdown = stopping.set  # running requests end at once (serve() calls it on Ctrl-C)
    app.add_middleware(_Guard, api_key=api_key, metrics=metrics, cors_origins=cors_origins)
    return app


def is_loopback(host: str) -> bool:
    """Whether `host` (a --host value) listens only on this machine."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _timed_h11_protocol():
    """uvicorn's h11 protocol with a header timeout: a connection that has not sent a whole request head
    within HEADER_TIMEOUT_S of opening (or of its previous response) is closed, so slow or idle
    connections (slowloris) cannot pile up. uvicorn bounds only keep-alive idleness itself."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        header_timeout = HEADER_TIMEOUT_S

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.cycle is None or self.cycle.response_complete:
                if not self.transport.is_closing():
                    self.transport.close()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before and getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()  # a request head arrived
                self._head_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if getattr(self, "_head_timer", None) is None and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

        def connection_lost(self, exc) -> None:
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

    return TimedH11Protocol


def _model_name(model) -> str:
    from ..models import lookup

    source = lookup(str(model)) if not Path(str(model)).is_file() else None
    return source.name if source is not None else Path(str(model)).stem


def _kv_summary(runner) -> str:
    pool = getattr(runner, "pool", None)
    if pool is None:
        return f"per request, {getattr(getattr(runner, 'llm', None), 'kv_type', DEFAULT_KV_TYPE)}"
    return (f"{pool.n_cells} tokens in blocks of {pool.block_size}, {pool.kv_type.name}, up to "
            f"{pool.nbytes / 2**20:.0f} MiB")  # fmt: skip


def serve(model, host: str = "127.0.0.1", port: int = 8080, parallel: int = 1, ctx_size: int = 4096,
          api_key: str | None = None, threads: int | None = None, backend="auto", max_queue: int = 16,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, model_name: str | None = None,
          energy_source: str | None = None, kv_size: int | None = None, draft=None, speculative: str | None = "auto",
          kv_type: str = DEFAULT_KV_TYPE, print_fn=print, cors_origins: list[str] | None = None,
          reasoning_budget: int | None = None) -> int:  # fmt: skip
    """Load `model` (a path or a registry name), start a runner and serve the API until Ctrl-C or SIGTERM.
    Prints one line when it listens. kv_type: the KV cache's format (edgeinfer.load's). cors_origins:
    browser origins allowed besides local pages (default: $EDGEINFER_CORS_ORIGINS, comma-separated)."""
    from ..api import load
    from ..engine.batch import make_runner

    check_serve_args(parallel=parallel, ctx_size=ctx_size, max_queue=max_queue, max_body_bytes=max_body_bytes,
                     kv_size=kv_size, port=port, api_key=api_key, speculative=speculative, draft=draft)
    sock = bind_socket(host, port)
    cors_origins = cors_from_env(cors_origins)
    warn_if_open(host, api_key, "the model")
    llm = load(model, n_ctx=ctx_size, n_threads=threads, backend=backend, draft=draft, kv_type=kv_type)
    runner = make_runner(llm, parallel=parallel, max_queue=max_queue, n_ctx=ctx_size, kv_cells=kv_size)
    app = create_app(llm, runner, api_key=api_key, model_name=model_name or _model_name(model),
                     max_body_bytes=max_body_bytes, energy_source=energy_source, n_ctx=ctx_size,
                     speculative=speculative, cors_origins=cors_origins,
                     reasoning_budget=None if reasoning_budget is None or reasoning_budget < 0 else reasoning_budget)  # fmt: skip
    runner.start()

    def close():
        runner.stop()
        app.state.metrics.close()

    banner = (f"(parallel {parallel}, context {ctx_size}, KV cache {_kv_summary(runner)}"
              f"{', API key required' if api_key else ''}); Ctrl-C stops")  # fmt: skip
    return run_server(app, sock, app.state.model_name, banner, app.state.begin_shutdown, close, print_fn)


def check_serve_args(*, parallel, ctx_size, max_queue, max_body_bytes, kv_size, port, api_key, speculative, draft,
                     **more_counts) -> None:  # fmt: skip
    """The checks `serve` and `serve_models` make before anything loads: EdgeInferError naming the option.
    more_counts: other options that must be integers >= 1."""
    counts = {"parallel": (parallel, 1), "ctx_size": (ctx_size, 2), "max_queue": (max_queue, 1),
              "max_body_bytes": (max_body_bytes, 1), **{k: (v, 1) for k, v in more_counts.items()}}  # fmt: skip
    for name, (value, lo) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise EdgeInferError(f"{name} must be an integer >= {lo}, got {value!r}.")
    if kv_size is not None and (isinstance(kv_size, bool) or not isinstance(kv_size, int) or kv_size < 2):
        raise EdgeInferError(f"kv_size must be an integer >= 2 (tokens of KV cache in all), got {kv_size!r}.")
    if not 0 <= int(port) <= 65535:
        raise EdgeInferError(f"port must be in 0..65535, got {port!r}.")
    if api_key is not None and not api_key.strip():
        raise EdgeInferError("--api-key is empty: give a key, or leave the option out.")
    if speculative not in ("auto", *MODES, None):
        raise EdgeInferError(f"speculative must be 'auto', 'draft', 'ngram' or None, got {speculative!r}.")
    if speculative == "draft" and draft is None:
        raise EdgeInferError("--spec draft needs a draft model: give --draft MODEL.")


def warn_if_open(host: str, api_key: str | None, what: str) -> None:
    if api_key is None and not is_loopback(host):
        print(f"edgeinfer serve: WARNING: listening on {host}, reachable from other machines, and no API key is "
              f"set: anyone who can reach this port can use {what}. Set one with --api-key KEY (or "
              "EDGEINFER_API_KEY=KEY), or listen on 127.0.0.1.", file=sys.stderr, flush=True)  # fmt: skip


def run_server(app, sock, name: str, banner: str, begin_shutdown, close, print_fn=print) -> int:
    """Serve `app` on the bound `sock` until Ctrl-C or SIGTERM: one line when it listens ("NAME listening on
    URL BANNER"), begin_shutdown() when a signal arrives, close() and one line when it has stopped."""
    import signal

    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            lifespan="off", http=_timed_h11_protocol(), timeout_keep_alive=KEEP_ALIVE_S,
                            limit_concurrency=MAX_CONNECTIONS, h11_max_incomplete_event_size=64 * 1024)  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            begin_shutdown()
            super().handle_exit(sig, frame)

    server = Server(config)
    sock.listen(2048)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host

    def interrupt(signum, frame):  # uvicorn re-raises the signal it stopped on: make SIGTERM a clean stop too
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        print_fn(f"edgeinfer serve: {name} listening on http://{shown}:{bound_port} {banner}", flush=True)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        close()
        sock.close()
    print_fn("edgeinfer serve: stopped", flush=True)
    return 0
