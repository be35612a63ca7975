"""The labelled estimate used where no energy counter can be read: this process's CPU time (user +
system, every thread) times a stated figure of watts per busy core. It is never a measurement, and
says so: its source is always "estimate" and its note gives the figure.

The figure is `EDGEINFER_WATTS_PER_CORE` when set, else 10 W (a typical desktop/server core under
load; laptop cores draw less, big server sockets more per socket but similar per core). Nothing else
is added: no idle power, no memory, no other processes."""

from __future__ import annotations

import os
import time

from .base import Meter

DEFAULT_WATTS_PER_CORE = 10.0
ENV_WATTS = "EDGEINFER_WATTS_PER_CORE"


def watts_per_core() -> float:
    """The figure in use: EDGEINFER_WATTS_PER_CORE if it is a positive number, else the default."""
    env = os.environ.get(ENV_WATTS)
    if env:
        try:
            value = float(env)
            if value > 0:
                return value
        except ValueError:
            pass
    return DEFAULT_WATTS_PER_CORE


def cpu_seconds() -> float:
    """CPU time of this process so far, user + system, all threads."""
    return time.process_time()


class EstimateMeter(Meter):
    source = "estimate"

    def __init__(self, watts: float | None = None, reason: str = ""):
        self.watts_per_core = float(watts) if watts is not None else watts_per_core()
        if self.watts_per_core <= 0:
            raise ValueError(f"watts per core must be positive, not {watts!r}")
        self.reason = reason  # why no counter was used, e.g. "no RAPL or NVML counters readable here"

    @property
    def note(self) -> str:
        figure = (
            f"{self.watts_per_core:g} W per busy core assumed (this process's CPU time x {self.watts_per_core:g} W; "
            f"set {ENV_WATTS} to change it)"
        )
        return f"{self.reason}; {figure}" if self.reason else figure

    def _start(self):
        return cpu_seconds()

    def _stop(self, state) -> float:
        return max(0.0, cpu_seconds() - state) * self.watts_per_core
