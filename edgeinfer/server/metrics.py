"""What /metrics shows, in Prometheus' text format (version 0.0.4).

The server counts requests (by endpoint and status) and times to first token; the runner counts tokens,
queue depth and active sequences; an energy meter (`edgeinfer.energy.open_meter`) runs from the server's
start, so tokens per joule is generated tokens over the joules of the whole process lifetime, idle time
included. Its source is a label: "rapl" is measured, "estimate" is not (and `estimated="true"` says so).
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict

from ..energy import open_meter

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EnergyClock:
    """Joules since start from one meter, read at any time (each read closes one measurement and opens the
    next; the gap between them is a few microseconds)."""

    def __init__(self, source: str | None = None):
        self.meter = open_meter("cpu", source)
        self.source = self.meter.source
        self.note = self.meter.note
        self.estimated = "estimate" in self.source
        self._lock = threading.Lock()
        self._joules = 0.0
        self._open()

    def _open(self) -> None:
        self._cm = self.meter.measure()
        self._m = self._cm.__enter__()

    def joules(self) -> float:
        with self._lock:
            self._cm.__exit__(None, None, None)
            self._joules += self._m.joules or 0.0
            self._open()
            return self._joules

    def close(self) -> None:
        with self._lock:
            self._cm.__exit__(None, None, None)


class Metrics:
    """Server-side counters. `render(runner_stats)` gives the Prometheus page."""

    def __init__(self, model: str, energy_source: str | None = None):
        self.model = model
        self.started = time.time()
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.ttft_n = 0
        try:
            self.energy: EnergyClock | None = EnergyClock(energy_source)
        except Exception:  # no meter at all: the page says so instead of failing
            self.energy = None

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, int(status))] += 1

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            i = next((k for k, b in enumerate(TTFT_BUCKETS) if seconds <= b), len(TTFT_BUCKETS))
            self.ttft_counts[i] += 1
            self.ttft_sum += seconds
            self.ttft_n += 1

    def render(self, stats: dict) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help: str, samples: list[tuple[dict, float]]) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                out.append(f"{name}{_labels(labels)} {_value(value)}")

        with self._lock:
            requests = sorted(self.requests.items())
            ttft_counts, ttft_sum, ttft_n = list(self.ttft_counts), self.ttft_sum, self.ttft_n
        model = {"model": self.model}
        metric("edgeinfer_requests_total", "counter", "HTTP requests answered, by endpoint and status code.",
               [({"endpoint": e, "status": str(s)}, n) for (e, s), n in requests])  # fmt: skip
        finished = stats.get("requests_finished", {})
        metric("edgeinfer_generations_total", "counter", "Generation requests finished by the runner, by reason.",
               [({"reason": r}, n) for r, n in sorted(finished.items())])  # fmt: skip
        metric("edgeinfer_prompt_tokens_total", "counter", "Prompt tokens processed.",
               [(model, stats.get("prompt_tokens_total", 0))])  # fmt: skip
        metric("edgeinfer_generated_tokens_total", "counter", "Tokens generated.",
               [(model, stats.get("generated_tokens_total", 0))])  # fmt: skip
        metric("edgeinfer_queue_depth", "gauge", "Requests waiting for a free sequence slot.",
               [(model, stats.get("queue_depth", 0))])  # fmt: skip
        metric("edgeinfer_active_sequences", "gauge", "Sequences being generated now.",
               [(model, stats.get("active", 0))])  # fmt: skip
        metric("edgeinfer_tokens_per_second", "gauge", "Generated tokens per second over the last 10 seconds.",
               [(model, stats.get("tokens_per_second", 0.0))])  # fmt: skip

        known = {"requests_total", "requests_finished", "prompt_tokens_total", "generated_tokens_total", "queue_depth",
                 "active", "tokens_per_second", "uptime_s"}  # fmt: skip
        for key, value in sorted(stats.items()):  # whatever else a runner reports (e.g. prefix tokens reused)
            if key in known or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key):
                metric(f"edgeinfer_runner_{key}", "untyped", f"The runner's {key.replace('_', ' ')}.", [(model, value)])

        name = "edgeinfer_time_to_first_token_seconds"
        out.append(f"# HELP {name} From a request's arrival to its first generated token.")
        out.append(f"# TYPE {name} histogram")
        cum = 0
        for bound, n in zip(TTFT_BUCKETS + (float("inf"),), ttft_counts):
            cum += n
            out.append(f'{name}_bucket{{le="{_value(bound)}"}} {cum}')
        out.append(f"{name}_sum {_value(ttft_sum)}")
        out.append(f"{name}_count {ttft_n}")

        if self.energy is not None:
            joules = self.energy.joules()
            labels = {"source": self.energy.source, "estimated": "true" if self.energy.estimated else "false"}
            generated = stats.get("generated_tokens_total", 0)
            metric("edgeinfer_energy_joules_total", "counter",
                   f"Energy since the server started ({self.energy.note}).", [(labels, joules)])  # fmt: skip
            metric("edgeinfer_tokens_per_joule", "gauge",
                   "Generated tokens per joule since the server started (idle time included).",
                   [(labels, generated / joules if joules > 0 else 0.0)])  # fmt: skip
        metric("edgeinfer_uptime_seconds", "gauge", "Seconds since the server started.",
               [({}, time.time() - self.started)])  # fmt: skip
        return "\n".join(out) + "\n"

    def close(self) -> None:
        if self.energy is not None:
            self.energy.close()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _value(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))
