"""Energy meters: what a token costs in joules, measured where the machine allows, estimated (and
labelled so) where it does not.

    from edgeinfer.energy import open_meter
    meter = open_meter(device="cpu")       # RAPL where readable, else the labelled estimate
    with meter.measure() as m:
        work()
    m.joules, m.seconds, m.source, m.note

Sources: "rapl" (CPU packages, Linux powercap), "nvml" (NVIDIA GPU board; only for a GPU device, and
then added to the CPU side's meter: "nvml+rapl" or "nvml+estimate"), "estimate" (this process's CPU
time x a stated watts-per-core figure; never a measurement).
"""

from __future__ import annotations

from .base import Measurement, Meter, MeterUnavailable
from .estimate import DEFAULT_WATTS_PER_CORE, EstimateMeter, watts_per_core
from .nvml import NvmlMeter
from .rapl import RaplMeter

SOURCES = ("auto", "rapl", "nvml", "estimate")


class CombinedMeter(Meter):
    """Several meters read around the same block; joules add up (e.g. GPU board + CPU packages)."""

    def __init__(self, meters: list[Meter]):
        self.meters = meters
        self.source = "+".join(m.source for m in meters)

    @property
    def note(self) -> str:
        return "; ".join(f"{m.source}: {m.note}" for m in self.meters)

    def _start(self):
        return {"states": [m._start() for m in self.meters], "joules": []}

    def _stop(self, state) -> float:
        pairs = list(zip(self.meters, state["states"]))
        state["joules"] = [m._stop(s) for m, s in reversed(pairs)][::-1]
        return sum(state["joules"])

    def _parts(self, state) -> dict[str, float]:
        return {m.source: j for m, j in zip(self.meters, state["joules"])}


def _is_gpu(device) -> bool:
    return isinstance(device, str) and device.split(":")[0].lower() in ("gpu", "cuda", "nvidia")


def _cpu_meter(extra_reason: str = "") -> Meter:
    try:
        return RaplMeter()
    except MeterUnavailable as e:
        why = str(e)
        reason = f"no RAPL or NVML counters readable here ({why})" if not extra_reason else f"{extra_reason}; no RAPL counters readable here ({why})"
        return EstimateMeter(reason=reason)


_GPUS_IN_USE: list[str] = []


def note_gpu_in_use(device: str = "cuda:0") -> None:
    """Say that this process runs work on a GPU (edgeinfer.load does, for n_gpu_layers): from then on an
    automatic meter for "cpu" also counts that GPU's board (NVML), where it can be read."""
    if device not in _GPUS_IN_USE:
        _GPUS_IN_USE.append(device)


def gpus_in_use() -> tuple[str, ...]:
    return tuple(_GPUS_IN_USE)


def open_meter(device: str = "cpu", source: str | None = None) -> Meter:
    """The best meter for `device` ("cpu", or "gpu"/"cuda[:N]" when a GPU does the work).

    source: None/"auto" picks (RAPL where readable, else the estimate; NVML added for a GPU device, and
    for "cpu" too once this process runs layers on a GPU: note_gpu_in_use); "rapl", "nvml" or "estimate"
    asks for that one and raises MeterUnavailable when it cannot be read."""
    source = "auto" if source is None else source
    if source == "auto" and not _is_gpu(device) and _GPUS_IN_USE:
        device = _GPUS_IN_USE[0]
    if source not in SOURCES:
        raise MeterUnavailable(f"Unknown energy source {source!r}; choose one of: {', '.join(SOURCES)}.")
    try:
        if source == "rapl":
            return RaplMeter()
        if source == "nvml":
            return NvmlMeter(device if _is_gpu(device) else 0)
    except MeterUnavailable as e:
        raise MeterUnavailable(
            f"{source.upper()} energy counters cannot be read here ({e}); use the energy source "
            "'auto' (or 'estimate') instead."
        ) from None
    if source == "estimate":
        return EstimateMeter()
    if not _is_gpu(device):
        return _cpu_meter()
    try:
        gpu = NvmlMeter(device)
    except MeterUnavailable as e:
        return _cpu_meter(extra_reason=f"a GPU was asked for but {e}")
    return CombinedMeter([gpu, _cpu_meter()])


def available_sources() -> dict[str, str]:
    """Each source -> "available" or the reason it is not (for `edgeinfer bench` and diagnostics)."""
    out = {}
    for name, make in (("rapl", RaplMeter), ("nvml", NvmlMeter)):
        try:
            make()
            out[name] = "available"
        except MeterUnavailable as e:
            out[name] = str(e)
    out["estimate"] = "available"
    return out


__all__ = [
    "DEFAULT_WATTS_PER_CORE",
    "CombinedMeter",
    "EstimateMeter",
    "Measurement",
    "Meter",
    "MeterUnavailable",
    "NvmlMeter",
    "RaplMeter",
    "SOURCES",
    "available_sources",
    "gpus_in_use",
    "note_gpu_in_use",
    "open_meter",
    "watts_per_core",
]
