"""A small progress bar for long work (downloads, checksums) on stderr.

On a terminal it redraws one line; elsewhere (logs, CI) it prints a line at the start and at the end only.
"""

from __future__ import annotations

import sys
import time


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    def __init__(self, label: str, total: int | None, stream=None, enabled: bool = True):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self._last = time.monotonic()
        if enabled and not self.tty:
            size = f" ({format_bytes(total)})" if total else ""
            print(f"{label}{size} ...", file=self.stream, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self._last >= 0.1:
            self._last = now
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        rate = self.done / max(now - self.start, 1e-6)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = (
                f"\r{self.label} [{bar:<30}] {frac:6.1%} {format_bytes(self.done)}/"
                f"{format_bytes(self.total)} {format_bytes(rate)}/s"
            )
        else:
            text = f"\r{self.label} {format_bytes(self.done)} {format_bytes(rate)}/s"
        self.stream.write(text + end)
        self.stream.flush()

    def close(self, message: str = "done") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self._draw(now, end=f" {message}\n")
        else:
            print(f"{self.label}: {message} ({now - self.start:.1f} s)", file=self.stream, flush=True)
