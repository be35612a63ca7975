"""What every meter shares: a `Measurement` and the `with meter.measure() as m:` protocol."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import EdgeInferError


class MeterUnavailable(EdgeInferError):
    """This meter cannot read its counters on this machine (the message says why)."""


@dataclass
class Measurement:
    """Energy and wall time of one measured block. `joules` and `seconds` are set when the block ends.

    source: "rapl", "nvml", "nvml+rapl", "nvml+estimate" or "estimate" (never a measurement);
    note: one sentence on what was counted (and, for an estimate, the figure assumed)."""

    source: str
    note: str = ""
    joules: float | None = None
    seconds: float | None = None
    parts: dict[str, float] = field(default_factory=dict)  # joules per part of a combined meter

    @property
    def watts(self) -> float | None:
        if self.joules is None or not self.seconds:
            return None
        return self.joules / self.seconds

    @property
    def is_estimate(self) -> bool:
        return "estimate" in self.source

    def tokens_per_joule(self, n_tokens: int) -> float | None:
        if not self.joules or self.joules <= 0:
            return None
        return n_tokens / self.joules

    def to_dict(self) -> dict:
        return {"source": self.source, "note": self.note, "joules": self.joules, "seconds": self.seconds}


class Meter:
    """A source of energy readings. Subclasses implement `_start()` -> state and `_stop(state)` -> joules."""

    source = "meter"

    @property
    def note(self) -> str:
        return ""

    @property
    def description(self) -> str:
        return f"{self.source}: {self.note}" if self.note else self.source

    def _start(self):  # pragma: no cover - interface
        raise NotImplementedError

    def _stop(self, state) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def _parts(self, state) -> dict[str, float]:
        return {}

    @contextmanager
    def measure(self):
        """`with meter.measure() as m: work()` then `m.joules`, `m.seconds`, `m.source`, `m.note`.
        The figures are filled in even when the block raises."""
        m = Measurement(self.source, self.note)
        state = self._start()
        t0 = time.perf_counter()
        try:
            yield m
        finally:
            m.seconds = time.perf_counter() - t0
            m.joules = float(self._stop(state))
            m.parts = self._parts(state)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"
