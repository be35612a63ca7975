"""CPU package energy from Linux powercap (RAPL): `/sys/class/powercap/intel-rapl:N/energy_uj`.

Each top-level zone `intel-rapl:N` (AMD Zen cores appear under the same driver; `amd-rapl:N` is
accepted too) whose `name` starts with "package" is one CPU socket; their counters are summed. Sub-zones
(`intel-rapl:N:M`: core, uncore, dram) lie inside a package and are not added again, nor is `psys` (the
whole platform, which includes the packages). Counters are microjoules that wrap at
`max_energy_range_uj`; a reading lower than the one before means one wrap. A background thread reads
every `poll_s` seconds during a measurement, so long measurements cannot wrap twice unseen.

Since Linux 5.10 `energy_uj` is readable by root only: a permission error means "not available" here,
never a crash (`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj` opens it)."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from .base import Meter, MeterUnavailable

POWERCAP_ROOT = "/sys/class/powercap"
_ZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+)$")


@dataclass(frozen=True)
class RaplDomain:
    path: Path
    name: str
    max_range_uj: int

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


def _read(path: Path) -> str:
    return path.read_text().strip()


def find_domains(root: str | os.PathLike | None = None) -> list[RaplDomain]:
    """The package domains under `root` (default POWERCAP_ROOT), each checked readable.
    Raises MeterUnavailable with the reason when there are none, or one cannot be read."""
    root = Path(POWERCAP_ROOT if root is None else root)
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        raise MeterUnavailable(f"no powercap interface: {root} is missing") from None
    domains, problems = [], []
    for entry in entries:
        if not _ZONE.match(entry):
            continue
        zone = root / entry
        try:
            name = _read(zone / "name")
        except OSError:
            name = entry
        if not name.startswith("package") and name != entry:
            continue  # psys (whole platform) or an unnamed zone kind we would double count
        try:
            max_range = int(_read(zone / "max_energy_range_uj"))
            domain = RaplDomain(zone, name, max_range)
            domain.read_uj()
        except PermissionError:
            problems.append(f"{zone / 'energy_uj'}: permission denied (root only since Linux 5.10)")
            continue
        except (OSError, ValueError) as e:
            problems.append(f"{zone}: unreadable ({e.__class__.__name__})")
            continue
        domains.append(domain)
    if problems:  # a partial sum would understate the energy: use all packages or none
        raise MeterUnavailable("RAPL counters not readable: " + "; ".join(problems))
    if not domains:
        raise MeterUnavailable(f"no RAPL package domains under {root}")
    return domains


def energy_delta_uj(start: int, end: int, max_range_uj: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 after max_range_uj."""
    if end >= start:
        return end - start
    return max_range_uj - start + end


class _Run:
    """One measurement in progress: the last reading of each domain and the microjoules so far."""

    def __init__(self, domains: list[RaplDomain]):
        self.domains = domains
        self.last = [d.read_uj() for d in domains]
        self.total_uj = [0] * len(domains)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def update(self) -> None:
        with self.lock:
            for i, d in enumerate(self.domains):
                now = d.read_uj()
                self.total_uj[i] += energy_delta_uj(self.last[i], now, d.max_range_uj)
                self.last[i] = now


class RaplMeter(Meter):
    source = "rapl"

    def __init__(self, root: str | os.PathLike | None = None, poll_s: float = 10.0):
        self.domains = find_domains(root)
        self.poll_s = poll_s

    @property
    def note(self) -> str:
        names = ", ".join(d.path.name for d in self.domains)
        return f"CPU package energy from powercap RAPL counters ({names}); DRAM and other devices not included"

    def _start(self) -> _Run:
        run = _Run(self.domains)
        if self.poll_s and self.poll_s > 0:

            def poll() -> None:
                while not run.stop.wait(self.poll_s):
                    try:
                        run.update()
                    except (OSError, ValueError):
                        continue  # a failed sample: the next one (or the final read) catches up

            run.thread = threading.Thread(target=poll, name="edgeinfer-rapl", daemon=True)
            run.thread.start()
        return run

    def _stop(self, run: _Run) -> float:
        run.stop.set()
        if run.thread is not None:
            run.thread.join()
        run.update()
        return sum(run.total_uj) / 1e6

    def _parts(self, run: _Run) -> dict[str, float]:
        return {d.path.name: uj / 1e6 for d, uj in zip(run.domains, run.total_uj)}
