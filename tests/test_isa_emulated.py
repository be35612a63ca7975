"""The x8 kernel sets this machine cannot run, checked without their hardware: the same tile sources
(native/x8_tiles.h, native/x8_tiles_neon.h) compiled into a standalone harness (tests/isa/x8_harness.c)
that compares every set's output with the scalar kernels' (native/x8.c), bit for bit, on every x8 format
(random and extreme weights, 8 / 37 / 64 rows, 1-17 tokens: every tile width and remainder, token blocks,
row ranges split over 1-3 threads, three prefetch distances), and exits nonzero on any difference.

- AVX-512 VNNI and AVX-VNNI through SIMDe (header-only x86 intrinsics in portable C: `apt-get install
  libsimde-dev`), on an x86 CPU with AVX2/FMA/F16C (the sets' other instructions run natively, and FMA
  must be real for the float operations to be the same);
- NEON (plain, with sdot, with smmla) through SIMDe's NEON on that x86 CPU (SMMLA, which SIMDe 0.7.4
  lacks, from its definition: tests/isa/mmla_ref.h);
- NEON compiled for real by a cross compiler (`gcc-aarch64-linux-gnu`) with the extension's flags and run
  under `qemu-user` (`qemu-aarch64 -cpu max`: dotprod and i8mm, where SMMLA itself is checked against
  mmla_ref.h; `-cpu neoverse-n1`: dotprod without i8mm, where the i8mm set is not offered and stops on its
  first SMMLA; `-cpu cortex-a57`: neither, where the plain set must run and the hwcaps must say so), or
  natively on an aarch64 machine;
- the NEON objects disassembled: SMMLA in the i8mm set, sdot by element in the dotprod set, neither in the
  plain one;
- the whole extension's C compiled for aarch64 (the dispatch code, not run).

Each case is skipped, saying which tool is missing, where its tools are not installed (README: development).
Builds are cached per content of their sources and flags in the temp directory (the latest of each kind).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
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
    for header in sorted([*NATIVE.glob("*.h"), *ISA.glob("*.h"), *ISA.glob("*/*.h")]):
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


NEON_SETS = ("neon", "neon_dotprod", "neon_i8mm")
NEON_UNITS = ("x8_neon.c", "x8_neon_dotprod.c", "x8_neon_i8mm.c")


def test_neon_through_simde():
    """The NEON sets (x8_neon.c: widening multiplies; x8_neon_dotprod.c: sdot; x8_neon_i8mm.c: smmla),
    compiled against SIMDe's NEON on x86 (and SMMLA from its definition), give the scalar kernels' bits."""
    why = _host_reason()
    if why:
        pytest.skip(why)
    emu = [*EMU_FLAGS, "-DX8_EMULATED_NEON", f"-I{ISA / 'simde_neon'}"]
    harness = (ISA / "x8_harness.c", [*EXT_FLAGS, "-DHARNESS_NEON", "-DX8_EMULATED_NEON"])
    exe = _build("gcc", [*_x86_units(), *((NATIVE / f, emu) for f in NEON_UNITS), harness], "neon-simde")
    _assert_all_equal(_run([str(exe), *NEON_SETS]), NEON_SETS)


def _aarch64_toolchain() -> tuple[str, list[str], str | None]:
    """(compiler, command prefix that runs an aarch64 executable, why not), natively or under qemu-user"""
    if IS_AARCH64:
        return "gcc", [], _missing("gcc")
    why = _missing("aarch64-linux-gnu-gcc", "qemu-aarch64")
    if not why and not AARCH64_SYSROOT.exists():
        why = f"no aarch64 sysroot at {AARCH64_SYSROOT} (apt-get install gcc-aarch64-linux-gnu)"
    return "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", str(AARCH64_SYSROOT)], why


def _aarch64_harness() -> tuple[Path, list[str]]:
    """the harness built for aarch64 with the extension's flags, and the command prefix that runs it"""
    cc, prefix, why = _aarch64_toolchain()
    if why:
        pytest.skip(why)
    units = [(NATIVE / f, EXT_FLAGS) for f in ("x8.c", *NEON_UNITS)]
    return _build(cc, [*units, (ISA / "x8_harness.c", [*EXT_FLAGS, "-DHARNESS_NEON"])], "aarch64"), prefix


def _on_cpu(prefix: list[str], cpu: str, exe: Path, *args: str) -> subprocess.CompletedProcess:
    """exe run under qemu-user as `cpu`, in a scratch directory and without core dumps (a SIGILL is expected)"""
    import resource

    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([*prefix[:1], "-cpu", cpu, *prefix[1:], str(exe), *args], capture_output=True,
                              text=True, timeout=900, cwd=cwd,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)))  # fmt: skip


def test_neon_compiled_for_aarch64_and_run():
    """The NEON sets built for real (the extension's flags, its target attributes) and run on ARM CPU models:
    with dotprod and i8mm (qemu's `max`: the i8mm set first, SMMLA equal to its definition, the i8mm and
    dotprod sets equal to the scalar kernels), with dotprod but no i8mm (Neoverse-N1: the i8mm set not
    offered, and run anyway it stops at its first SMMLA, an illegal instruction there), and with neither
    (Cortex-A57: the hwcaps say so, and the plain set, which must not contain an sdot, runs)."""
    exe, prefix = _aarch64_harness()
    if not prefix:  # an aarch64 machine: the sets its CPU offers
        offered = _run([str(exe)]).stdout.split("sets=", 1)[1].split()[0].split(",")
        _assert_all_equal(_run([str(exe), *offered]), tuple(offered))
        return
    done = _on_cpu(prefix, "max", exe, "neon_i8mm", "neon_dotprod")
    assert done.stdout.startswith("dotprod=1 i8mm=1 sets=neon_i8mm,neon_dotprod,neon\n"), done.stdout[:200]
    assert "smmla: equal to its definition (20000 cases)" in done.stdout, done.stdout[:500]
    _assert_all_equal(done, ("neon_i8mm", "neon_dotprod"))
    done = _on_cpu(prefix, "neoverse-n1", exe)
    assert done.stdout.startswith("dotprod=1 i8mm=0 sets=neon_dotprod,neon\n"), done.stdout[:200]
    done = _on_cpu(prefix, "neoverse-n1", exe, "neon_i8mm")
    assert done.returncode in (-4, 132), (done.returncode, done.stdout[-500:], done.stderr[-500:])  # SIGILL
    assert "neon_i8mm Q4_0: ok" not in done.stdout
    done = _on_cpu(prefix, "cortex-a57", exe, "neon")
    assert done.stdout.startswith("dotprod=0 i8mm=0 sets=neon\n"), done.stdout[:200]
    _assert_all_equal(done, ("neon",))


def test_neon_objects_use_their_instructions():
    """Disassembled, the aarch64 objects of the NEON sets hold what their names promise: SMMLA in the i8mm set
    (and sdot for its one-token tiles), sdot by element in the dotprod set with next to no broadcasts (dup
    from a lane: one per word and token before sdot took its lane), neither SMMLA nor sdot in the plain one."""
    cc, _, why = _aarch64_toolchain()
    objdump = cc.replace("gcc", "objdump")
    why = why or _missing(objdump)
    if why:
        pytest.skip(why)
    with tempfile.TemporaryDirectory() as tmp:
        asm = {}
        for f in NEON_UNITS:
            obj = f"{tmp}/{f}.o"
            done = subprocess.run([cc, *EXT_FLAGS, "-c", str(NATIVE / f), "-o", obj], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
            asm[f] = subprocess.run([objdump, "-d", obj], capture_output=True, text=True).stdout
    sdot_lane = re.compile(r"\bsdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]")
    plain, dotprod, i8mm = (asm[f] for f in NEON_UNITS)
    assert "smmla" not in plain and "sdot" not in plain
    dup_lane = re.compile(r"\bdup\s+v\d+\.4s, v\d+\.s\[")
    assert len(sdot_lane.findall(dotprod)) > 100 and "smmla" not in dotprod
    assert len(dup_lane.findall(dotprod)) < len(sdot_lane.findall(dotprod)) / 50
    assert len(re.findall(r"\bsmmla\s", i8mm)) > 100 and len(sdot_lane.findall(i8mm)) > 100


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
