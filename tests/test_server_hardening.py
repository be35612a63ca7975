"""The server under hostile requests (issue 18): lone surrogates, non-ASCII keys, foreign origins, bodies
that stop or never come, idle connections, template bombs, oversized limits. Every answer is a JSON
4xx (or a quiet close of a connection nobody uses), never a 500, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from edgeinfer.engine.runner import Finish, Handle
from edgeinfer.errors import EdgeInferError
from edgeinfer.server import app as server_app
from edgeinfer.server import create_app
from edgeinfer.server.app import is_loopback, origin_allowed
from edgeinfer.server.protocol import MAX_LOGIT_BIAS
from edgeinfer.tokenizer.chat import ChatTemplate

BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


class _LLM:
    n_vocab = 100
    n_ctx = 64
    path = Path("fake.gguf")
    architecture = "fake"
    template = None

    def tokenize_chat(self, messages):
        if self.template is not None:
            self.template.render(messages)
        return [1] * sum(len(m["content"]) for m in messages)

    def tokenize(self, text, add_special=True, parse_special=False):
        return [1] * len(text)

    def detokenize(self, ids):
        return "x" * len(ids)


class _Runner:
    n_ctx = 64

    def check_prompt(self, ids):
        pass

    def check_speculative(self, mode):
        pass

    def submit(self, ids, params, max_tokens, stop=(), loop=None, speculative=None, grammar=None, logprobs=None):
        h = Handle(list(ids), params, max_tokens, stop, loop)
        h.emit("ok")
        h.emit(Finish("stop", len(ids), 1))
        return h

    def stats(self):
        return {"requests_total": 0, "queue_depth": 0, "active": 0}


def _client(llm=None, **kw):
    from starlette.testclient import TestClient

    return TestClient(create_app(llm or _LLM(), _Runner(), model_name="fake", energy_source="estimate", **kw))


def _status_count(client, status: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("edgeinfer_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_lone_surrogate_is_a_400_not_a_500():
    with _client() as c:
        for body in (b'{"prompt": "a\\ud800b", "echo": true}', b'{"prompt": "\\udfff", "echo": true, "stream": true}',
                     b'{"messages": [{"role": "user", "content": "\\ud83d"}]}'):  # fmt: skip
            url = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
            r = c.post(url, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert "surrogate" in r.json()["error"]["message"]
        # a valid pair is fine
        r = c.post("/v1/completions", content=b'{"prompt": "\\ud83d\\ude00", "echo": true}')
        assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("\U0001f600")
        assert _status_count(c, "500") == 0


def test_non_ascii_bearer_is_401():
    with _client(api_key="sekrit") as c:
        for value in (b"Bearer \xff\xfe\x80", "Bearer schlüssel".encode(), b"Bearer", b"\xc3\xa9 sekrit"):
            r = c.get("/v1/models", headers=[(b"authorization", value)])
            assert r.status_code == 401, (value, r.status_code)
        assert c.get("/v1/models", headers={"Authorization": "Bearer sekrit"}).status_code == 200
        assert _status_count(c, "500") == 0


def test_cors_only_local_origins_by_default():
    with _client() as c:
        r = c.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
        r = c.post("/v1/completions", json={"prompt": "hi"}, headers={"Origin": "http://attacker.test:8080"})
        assert r.status_code == 403
        r = c.get("/v1/models", headers={"Origin": "http://localhost:5173"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:5173"
        r = c.options("/v1/chat/completions", headers={"Origin": "http://127.0.0.1:3000",
                                                       "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "authorization"})  # fmt: skip
        assert r.status_code == 204 and "POST" in r.headers["access-control-allow-methods"]
        assert c.get("/v1/models").status_code == 200  # no Origin (curl, SDKs): as before
    with _client(cors_origins=["https://app.example"]) as c:
        assert c.get("/v1/models", headers={"Origin": "https://app.example"}).status_code == 200
        assert c.get("/v1/models", headers={"Origin": "http://localhost:1"}).status_code == 403


def test_origin_and_host_helpers():
    assert origin_allowed("http://[::1]:8080", []) and origin_allowed("https://localhost", [])
    assert not origin_allowed("null", []) and not origin_allowed("http://localhost.evil.com", [])
    assert origin_allowed("https://x.example", ["*"])
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")


def test_request_limits():
    with _client() as c:
        bias = {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}
        r = c.post("/v1/completions", json={"prompt": "hi", "logit_bias": bias})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
        r = c.post("/v1/completions", json={"prompt": "hi", "stop": ["a"] * 100})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
        r = c.post("/v1/completions", json={"prompt": "hi", "n": 1000})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_template_bomb_is_a_4xx_and_the_server_keeps_serving():
    llm = _LLM()
    llm.template = ChatTemplate(BOMB)
    with _client(llm) as c:
        t = time.monotonic()
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert 400 <= r.status_code < 600 and r.status_code != 500 and "error" in r.json()
        assert time.monotonic() - t < 10
        assert c.get("/health").json() == {"status": "ok"}
        llm.template = ChatTemplate("{{ 'ab' * 4000000000 }}")
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]


def _asgi(app, messages, timeout=10.0):
    """Run one HTTP request through the ASGI app with the given receive() messages (then blocks, or
    http.disconnect when the list ends with it); returns the response status (None: none sent)."""
    sent = []

    async def main():
        queue = list(messages)

        async def receive():
            if queue:
                return queue.pop(0)
            await asyncio.sleep(3600)

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [
            (b"content-type", b"application/json")], "query_string": b"", "http_version": "1.1",
            "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1), "root_path": ""}  # fmt: skip
        await asyncio.wait_for(app(scope, receive, send), timeout)

    asyncio.run(main())
    return next((m["status"] for m in sent if m["type"] == "http.response.start"), None)


def test_client_gone_mid_body_is_not_a_500():
    app = create_app(_LLM(), _Runner(), model_name="fake", energy_source="estimate")
    status = _asgi(app, [{"type": "http.request", "body": b'{"prompt": "h', "more_body": True},
                         {"type": "http.disconnect"}])  # fmt: skip
    assert status == 499
    assert 'status="500"' not in app.state.metrics.render({"requests_total": 0, "queue_depth": 0, "active": 0})


def test_slow_body_times_out(monkeypatch):
    monkeypatch.setattr(server_app, "BODY_IDLE_S", 0.3)
    app = create_app(_LLM(), _Runner(), model_name="fake", energy_source="estimate")
    t = time.monotonic()
    status = _asgi(app, [{"type": "http.request", "body": b'{"prompt"', "more_body": True}])
    assert status == 408 and time.monotonic() - t < 5


def test_idle_and_slow_header_connections_are_closed(monkeypatch):
    import uvicorn

    monkeypatch.setattr(server_app, "HEADER_TIMEOUT_S", 0.5)
    app = create_app(_LLM(), _Runner(), model_name="fake", energy_source="estimate")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="error", lifespan="off", http=server_app._timed_h11_protocol())
    server = uvicorn.Server(config)
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)

        def closed_within(s, seconds):
            s.settimeout(seconds)
            try:
                return s.recv(1) == b""
            except (TimeoutError, socket.timeout):
                return False
            except ConnectionResetError:
                return True

        idle = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        assert closed_within(idle, 3) and closed_within(slow, 3)
        # a normal request still works
        ok = socket.create_connection(("127.0.0.1", port))
        ok.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ok.settimeout(5)
        assert b"200 OK" in ok.recv(4096)
        for s in (idle, slow, ok):
            s.close()
    finally:
        server.should_exit = True
        th.join(10)
        sock.close()


def test_serve_warns_when_exposed_without_a_key(capsys):
    with pytest.raises(EdgeInferError):
        server_app.serve("no-such-model-file.gguf", host="0.0.0.0", port=0, print_fn=lambda *a, **k: None)
    err = capsys.readouterr().err
    assert "WARNING" in err and "--api-key" in err
    with pytest.raises(EdgeInferError):
        server_app.serve("no-such-model-file.gguf", host="127.0.0.1", port=0, print_fn=lambda *a, **k: None)
    assert "WARNING" not in capsys.readouterr().err


def test_stream_error_event_is_json():
    body = json.loads(server_app.P.sse({"text": "a\ud800"})[6:].decode())
    assert body["text"] == "a?"
