"""The x8 kernel sets this machine cannot run, checked without their hardware: the same tile sources
(native/x8_tiles.h, native/x8_tiles_neon.h) compiled into a standalone harness (tests/isa/x8_harness.c)
that compares every set's output with the scalar kernels' (native/x8.c), bit for bit, on every x8 format
(random and extreme weights, 8 / 37 / 64 rows, 1-17 tokens: every tile width and remainder, token blocks,
row ranges split over 1-3 threads, three prefetch distances), and exits nonzero on any difference.

- AVX-512 VNNI and AVX-VNNI through SIMDe (header-only x86 intrinsics in portable C: `apt-get install
  libsimde-dev`), on an x86 CPU with AVX2/FMA/F16C (the sets' other instructions run natively, and FMA
  must be real for the float operations to be the same);
- NEON (plain and with sdot) through SIMDe's NEON on that x86 CPU;
- NEON compiled for real by a cross compiler (`gcc-aarch64-linux-gnu`) with the extension's flags and run
  under `qemu-user` (`qemu-aarch64 -cpu max`: dotprod; `-cpu cortex-a57`: none, where the plain set must
  run and the hwcaps must say so), or natively on an aarch64 machine;
- the whole extension's C compiled for aarch64 (the dispatch code, not run).

Each case is skipped, saying which tool is missing, where its tools are not installed (README: development).
Builds are cached per content of their sources and flags in the temp directory (the latest of each kind).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"
ISA = ROOT / "tests" / "isa"
SIMDE_HEADER = Path("/usr/include/simde/x86/avx512.h")
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")

# the extension's flags (setup.py), and lighter optimisation for the SIMDe builds (their compile time)
EXT_FLAGS = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas", f"-I{NATIVE}"]
EMU_FLAGS = ["-O1", *EXT_FLAGS[1:], "-mavx2", "-mfma", "-mf16c", "-DX8_EMULATED"]
X8_FORMATS = ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS")

IS_X86 = platform.machine() in ("x86_64", "AMD64")
IS_AARCH64 = platform.machine() in ("aarch64", "arm64")


def _x86_has(*features: str) -> bool:
    if not IS_X86:
        return False
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return False
    have = set(flags.split(":", 1)[1].split())
    return all(f in have for f in features)


def _missing(*tools: str) -> str | None:
    gone = [t for t in tools if shutil.which(t) is None]
    return f"{', '.join(gone)} not installed" if gone else None


def _build(cc: str, units: list[tuple[Path, list[str]]], name: str) -> Path:
    """Compile (source, flags) units with cc and link them: an executable cached per content."""
    key = hashlib.sha256(cc.encode())
    for src, flags in units:
        key.update(" ".join(flags).encode())
        key.update(src.read_bytes())
    for header in sorted([*NATIVE.glob("*.h"), *ISA.glob("*/*.h")]):
        key.update(header.read_bytes())
    out_dir = Path(tempfile.gettempdir()) / f"edgeinfer-isa-{name}-{key.hexdigest()[:16]}"
    exe = out_dir / "x8_harness"
    if exe.exists():
        return exe
    for stale in out_dir.parent.glob(f"edgeinfer-isa-{name}-*"):  # builds of older sources
        shutil.rmtree(stale, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    procs, objs = [], []
    for i, (src, flags) in enumerate(units):  # compiled side by side: the SIMDe units take a while
        obj = out_dir / f"{i}_{src.stem}.o"
        procs.append(subprocess.Popen([cc, *flags, "-c", str(src), "-o", str(obj)], stderr=subprocess.PIPE, text=True))
        objs.append(obj)
    for (src, _), p in zip(units, procs):
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, f"{cc} {src.name}:\n{err[-4000:]}"
    tmp = out_dir / f"x8_harness.{os.getpid()}"
    done = subprocess.run([cc, *map(str, objs), "-o", str(tmp), "-pthread", "-lm"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    tmp.replace(exe)
    return exe


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def _assert_all_equal(done: subprocess.CompletedProcess, sets: tuple[str, ...]) -> None:
    """The harness ran every format of every set and found no difference."""
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for s in sets:
        for f in X8_FORMATS:
            assert f"{s} {f}: ok" in out, (s, f, out[-2000:])
    assert "differed" in out and ", 0 differed" in out, out[-500:]


def _x86_units() -> list[tuple[Path, list[str]]]:
    """the scalar reference and the repack (x8.c, x8_avx2.c's AVX2 transpose), as the extension builds them"""
    return [(NATIVE / "x8.c", EXT_FLAGS), (NATIVE / "x8_avx2.c", EXT_FLAGS)]


def _host_reason() -> str | None:
    if not IS_X86:
        return "the SIMDe builds run on x86-64"
    if not _x86_has("avx2", "fma", "f16c"):
        return "this CPU lacks AVX2/FMA/F16C (the SIMDe builds run the sets' other instructions natively)"
    return _missing("gcc") or (None if SIMDE_HEADER.exists() else "SIMDe not installed (apt-get install libsimde-dev)")


def test_avx512vnni_and_avxvnni_through_simde():
    """The VNNI sets (vpdpbusd: x8_avx512.c, x8_avxvnni.c), compiled against SIMDe, give the scalar
    kernels' bits; so does AVX2 (native) in the same harness."""
    why = _host_reason()
    if why:
        pytest.skip(why)
    emu = [*EMU_FLAGS, f"-I{ISA / 'simde_x86'}"]
    exe = _build("gcc", [*_x86_units(), (NATIVE / "x8_avx512.c", emu), (NATIVE / "x8_avxvnni.c", emu),
                         (ISA / "x8_harness.c", [*EXT_FLAGS, "-DHARNESS_X86"])], "x86")  # fmt: skip
    _assert_all_equal(_run([str(exe), "avx2", "avx512vnni", "avxvnni"]), ("avx2", "avx512vnni", "avxvnni"))


def test_neon_through_simde():
    """The NEON sets (x8_neon.c: widening multiplies; x8_neon_dotprod.c: sdot), compiled against SIMDe's
    NEON on x86, give the scalar kernels' bits."""
    why = _host_reason()
    if why:
        pytest.skip(why)
    emu = [*EMU_FLAGS, "-DX8_EMULATED_NEON", f"-I{ISA / 'simde_neon'}"]
    harness = (ISA / "x8_harness.c", [*EXT_FLAGS, "-DHARNESS_NEON", "-DX8_EMULATED_NEON"])
    exe = _build("gcc", [*_x86_units(), (NATIVE / "x8_neon.c", emu), (NATIVE / "x8_neon_dotprod.c", emu), harness],
                 "neon-simde")  # fmt: skip
    _assert_all_equal(_run([str(exe), "neon", "neon_dotprod"]), ("neon", "neon_dotprod"))


def _aarch64_toolchain() -> tuple[str, list[str], str | None]:
    """(compiler, command prefix that runs an aarch64 executable, why not), natively or under qemu-user"""
    if IS_AARCH64:
        return "gcc", [], _missing("gcc")
    why = _missing("aarch64-linux-gnu-gcc", "qemu-aarch64")
    if not why and not AARCH64_SYSROOT.exists():
        why = f"no aarch64 sysroot at {AARCH64_SYSROOT} (apt-get install gcc-aarch64-linux-gnu)"
    return "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", str(AARCH64_SYSROOT)], why


def test_neon_compiled_for_aarch64_and_run():
    """The NEON sets built for real (the extension's flags, its target attributes) and run on an ARM CPU
    model with the dot product (qemu's `max`: every set) and without it (Cortex-A57: the hwcaps say so,
    and the plain set, which must not contain an sdot, runs)."""
    cc, prefix, why = _aarch64_toolchain()
    if why:
        pytest.skip(why)
    units = [(NATIVE / f, EXT_FLAGS) for f in ("x8.c", "x8_neon.c", "x8_neon_dotprod.c")]
    exe = _build(cc, [*units, (ISA / "x8_harness.c", [*EXT_FLAGS, "-DHARNESS_NEON"])], "aarch64")
    if prefix:
        done = _run([*prefix[:1], "-cpu", "max", *prefix[1:], str(exe), "neon", "neon_dotprod"])
        assert done.stdout.startswith("dotprod=1"), done.stdout[:200]
        _assert_all_equal(done, ("neon", "neon_dotprod"))
        done = _run([*prefix[:1], "-cpu", "cortex-a57", *prefix[1:], str(exe), "neon"])
        assert done.stdout.startswith("dotprod=0"), done.stdout[:200]
        _assert_all_equal(done, ("neon",))
    else:
        done = _run([str(exe), "neon", *(["neon_dotprod"] if "dotprod=1" in _run([str(exe)]).stdout else [])])
        _assert_all_equal(done, ("neon",))


def test_extension_compiles_for_aarch64():
    """Every C file of the extension compiles for aarch64 without a warning (the dispatch, the hwcaps,
    the NEON tables; x86 files compile to nothing there). Python's headers are the host's: the same LP64
    layout."""
    cc, _, why = _aarch64_toolchain()
    if why:
        pytest.skip(why)
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted(NATIVE.glob("*.c")):
            obj = f"{tmp}/{src.stem}.o"
            cmd = [cc, *EXT_FLAGS, "-O1", "-Werror", "-fPIC", f"-I{include}", "-c", str(src), "-o", obj]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{src.name}:\n{done.stderr[-3000:]}"
