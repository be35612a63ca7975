"""Facts about the machine that choose defaults: how many cores this process may really use."""

from __future__ import annotations

import os


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by the cgroup (v2 `cpu.max`, or v1 quota/period), None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fh:
            quota = int(fh.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fh:
            period = int(fh.read())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """Cores this process may run on: the affinity mask, capped by a cgroup quota (containers, VMs)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, int(limit)))
    return max(1, n)


def default_threads() -> int:
    """Threads for the kernels: `EDGEINFER_THREADS` if set, else every available core."""
    env = os.environ.get("EDGEINFER_THREADS")
    if env:
        try:
            value = int(env)
            if value > 0:
                return value
        except ValueError:
            pass
    return available_cpus()


def cpu_pressure() -> float | None:
    """The share of the last ten seconds in which some runnable task waited for a CPU (Linux's pressure
    stall information, /proc/pressure/cpu `some avg10`, as a fraction), None where the kernel has none."""
    try:
        with open("/proc/pressure/cpu") as fh:
            for line in fh:
                if line.startswith("some "):
                    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
                    return float(fields["avg10"]) / 100.0
    except (OSError, ValueError, KeyError):
        pass
    return None
