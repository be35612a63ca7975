"""Numba's on-disk cache of the kernels is stamped with the helper modules they are made of
(kernels/numba/cachestamp.py): a change in a helper compiles its dependents again, where Numba alone
keeps the stale machine code (it checks only the file that defines a function)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeinfer.kernels.numba import cachestamp, matmul, ops

NUMBA_DIR = Path(ops.__file__).parent
TOP = NUMBA_DIR.parents[1]
FOLLOWED = (str(NUMBA_DIR), str(TOP / "quant"))


def test_dependencies_of_the_kernels():
    """ops.py's kernels are made of simd.py and kvrows.py; the matmuls of x8.py, dequant.py, simd.py and
    quant's tables; nothing outside the followed packages is counted."""
    deps = {Path(p).relative_to(TOP).as_posix() for p in cachestamp.dependencies(str(TOP), ops.__file__, FOLLOWED)}
    assert {"kernels/numba/simd.py", "kernels/numba/kvrows.py", "quant/iquants.py"} <= deps
    assert "kernels/numba/ops.py" not in deps and "kernels/numpy_ops.py" not in deps
    deps = {Path(p).relative_to(TOP).as_posix() for p in cachestamp.dependencies(str(TOP), matmul.__file__, FOLLOWED)}
    assert {"kernels/numba/x8.py", "kernels/numba/dequant.py", "kernels/numba/simd.py"} <= deps
    assert all(d.startswith(("kernels/numba/", "quant/")) for d in deps)


def test_the_kernels_use_the_stamped_locator():
    for kernel in (ops._attention_serial, matmul.MATMUL_KERNELS[matmul.GGMLQuantizationType.Q4_0]):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, cachestamp.StampedLocator)
        source = kernel.py_func.__code__.co_filename
        assert locator.get_source_stamp()[1] == cachestamp.dependency_stamp(str(TOP), source, FOLLOWED)


_DRIVER = """
import importlib.util, sys
sys.path.insert(0, {root!r})
if {stamped!r}:
    spec = importlib.util.spec_from_file_location("cachestamp", {cachestamp!r})
    cachestamp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cachestamp)
    cachestamp.install({pkg!r}, {pkg!r}, ({pkg!r},))
from {name}.kernel import f
value = f()
print(value, sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values()))
"""


def _package(root: Path, name: str) -> Path:
    """A package whose cached kernel (kernel.py) inlines a helper from another file (helper.py)."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helper.py").write_text(_helper(1))
    (pkg / "kernel.py").write_text(textwrap.dedent("""
        from numba import njit

        from .helper import value


        @njit(cache=True)
        def f():
            return value() * 10
    """))
    return pkg


def _helper(v: int) -> str:
    return f"from numba import njit\n\n\n@njit(inline='always')\ndef value():\n    return {v}\n"


def _run(root: Path, pkg: Path, stamped: bool) -> tuple[int, int, int]:
    """(f(), cache hits, cache misses) in a fresh process."""
    script = _DRIVER.format(root=str(root), stamped=stamped, cachestamp=cachestamp.__file__, pkg=str(pkg),
                            name=pkg.name)  # fmt: skip
    env = dict(os.environ, NUMBA_CACHE_DIR=str(root / "cache"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    value, hits, misses = (int(x) for x in done.stdout.split())
    return value, hits, misses


@pytest.mark.parametrize("stamped", [True, False])
def test_a_changed_helper_recompiles_its_dependent(tmp_path, stamped):
    """Stamped: compiled once, then loaded from the cache while nothing changes, compiled again (the new
    helper's value) when the helper changes. Unstamped (Numba alone): the stale cached code runs."""
    pkg = _package(tmp_path, "stamped" if stamped else "plain")
    assert _run(tmp_path, pkg, stamped) == (10, 0, 1)  # compiled, saved
    assert _run(tmp_path, pkg, stamped) == (10, 1, 0)  # loaded from the cache
    (pkg / "helper.py").write_text(_helper(2))
    if stamped:
        assert _run(tmp_path, pkg, stamped) == (20, 0, 1)  # the dependent compiled again
        assert _run(tmp_path, pkg, stamped) == (20, 1, 0)
    else:
        assert _run(tmp_path, pkg, stamped) == (10, 1, 0), "Numba now sees helpers change: the stamp may go"
