"""How the Numba backend starts its OpenMP pool: libgomp's idle spin chosen from the CPU pressure when it
starts (kernels/numba/matmul.py: long on a quiet machine, short on a busy one), the user's own OpenMP
policy left alone, the environment as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer import system
from edgeinfer.kernels.numba import matmul

ROOT = Path(__file__).resolve().parents[1]


def test_spin_count_follows_the_pressure():
    assert matmul.spin_count(0.0) == matmul.SPIN_QUIET
    assert matmul.spin_count(matmul.BUSY_PRESSURE / 2) == matmul.SPIN_QUIET
    assert matmul.spin_count(matmul.BUSY_PRESSURE) == matmul.SPIN_BUSY
    assert matmul.spin_count(0.9) == matmul.SPIN_BUSY
    assert matmul.spin_count(None) == matmul.SPIN_BUSY  # no figure: the safe side
    assert int(matmul.SPIN_BUSY) < int(matmul.SPIN_QUIET) < 300000  # libgomp's default, ~3 ms


def test_cpu_pressure(tmp_path, monkeypatch):
    """PSI's `some avg10` as a fraction; None without the file."""
    got = system.cpu_pressure()
    assert (got is None) == (not os.path.exists("/proc/pressure/cpu"))
    assert got is None or 0.0 <= got <= 1.0
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=12.50 avg60=3.00 avg300=1.00 total=100\n"
                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")  # fmt: skip
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(psi if p == "/proc/pressure/cpu" else p, *a, **k))
    assert system.cpu_pressure() == pytest.approx(0.125)


_SCRIPT = """
import os
import {module}
import numba
print(numba.threading_layer(), os.environ.get("GOMP_SPINCOUNT", "-"))
"""


@pytest.mark.parametrize("module", ["edgeinfer.kernels.numba.matmul", "edgeinfer.kernels.native"])
@pytest.mark.parametrize("user", [None, "1234"])
def test_the_user_policy_wins_and_the_environment_is_kept(user, module):
    """Numba's pool and the native backend's (which starts Numba's with a short spin of its own) both
    leave GOMP_SPINCOUNT as they found it: the user's value, or none for child processes."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(ROOT)
    if user:
        env["GOMP_SPINCOUNT"] = user
    done = subprocess.run([sys.executable, "-c", _SCRIPT.format(module=module)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    layer, spin = done.stdout.split()
    assert layer == "omp"
    assert spin == (user or "-")
