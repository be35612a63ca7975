"""Numba's on-disk cache, stamped with the modules a kernel's file imports.

Numba keeps a cached function while the file that defines it is unchanged (its source stamp, a hash of
that one file). The kernels here are made of helpers from other files (simd.py's vector intrinsics,
kvrows.py's row loads, x8.py's tiles, quant's tables), inlined or frozen into the machine code: a change
there left the old code in the cache. `install()` puts a cache locator before Numba's own for the files
of one package; it finds the cache where Numba's locator would, and stamps it with (Numba's stamp, a
hash of every module the file imports from the followed packages, transitively). A change in any of
them makes the stamp differ, Numba finds the index stale and compiles the function again.

Imports are read from the source (ast), relative ones and those naming the package; a module outside
the followed packages is not followed (it holds Python, not compiled code or tables). Stdlib and
numba.core.caching only, so that a test can load this file alone.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os

from numba.core import caching

_CACHE_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # (older Numba: _CacheImpl)


def _module_file(top: str, parts: tuple[str, ...]) -> str | None:
    """The file of module `parts` (names below the top package), a module or a package's __init__."""
    base = os.path.join(top, *parts)
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _package_of(top: str, path: str) -> tuple[str, ...]:
    """The package (names below the top package) that the module at `path` sits in."""
    rel = os.path.relpath(os.path.dirname(path), top)
    return () if rel == "." else tuple(rel.split(os.sep))


@functools.lru_cache(maxsize=None)
def _imports(top: str, path: str, mtime_ns: int) -> tuple[str, ...]:
    """The files of the top package's modules that `path` imports (mtime_ns: re-read after an edit)."""
    name = os.path.basename(top)
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), path)
    package = _package_of(top, path)
    found: list[str] = []
    for node in ast.walk(tree):
        files: list[str | None] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y: relative to this module's package
                if node.level - 1 > len(package):
                    continue
                base = package[: len(package) - (node.level - 1)]
                mod = tuple(node.module.split(".")) if node.module else ()
            elif node.module and node.module.split(".")[0] == name:
                base, mod = (), tuple(node.module.split("."))[1:]
            else:
                continue
            for alias in node.names:  # a submodule (`from . import x`), else a name the module defines
                sub = _module_file(top, base + mod + (alias.name,))
                files.append(sub if sub is not None else _module_file(top, base + mod))
        elif isinstance(node, ast.Import):
            files.extend(_module_file(top, tuple(a.name.split("."))[1:]) for a in node.names
                         if a.name.split(".")[0] == name)  # fmt: skip
        found.extend(f for f in files if f is not None)
    return tuple(sorted(set(found)))


def dependencies(top: str, path: str, followed: tuple[str, ...]) -> list[str]:
    """Every file in the followed directories that the module at `path` imports, transitively (`path`
    itself not among them)."""
    path = os.path.abspath(path)
    inside = tuple(os.path.abspath(d) + os.sep for d in followed)
    seen: set[str] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        for dep in _imports(top, current, os.stat(current).st_mtime_ns):
            if dep not in seen and dep.startswith(inside):
                seen.add(dep)
                todo.append(dep)
    return sorted(seen - {path})


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def dependency_stamp(top: str, path: str, followed: tuple[str, ...]) -> str:
    """A hash of the contents of every file the module at `path` depends on (dependencies())."""
    h = hashlib.sha256()
    for dep in dependencies(top, path, followed):
        st = os.stat(dep)
        h.update(os.path.relpath(dep, top).encode() + b"\0" + _file_digest(dep, st.st_mtime_ns, st.st_size).encode())
    return h.hexdigest()


class StampedLocator(caching._CacheLocator):
    """Numba's own locator for a function of a stamped package, its source stamp extended with the
    dependency stamp of the function's file."""

    packages: dict[str, tuple[str, tuple[str, ...], str]] = {}  # directory -> (top dir, followed dirs, variant)
    stamps: dict[str, str] = {}  # file -> its dependency stamp, once per process (its modules are loaded)

    def __init__(self, inner, stamp: str):
        self._inner, self._dep_stamp = inner, stamp

    @classmethod
    def from_function(cls, py_func, py_file):
        path = os.path.abspath(py_file)
        spec = next((v for d, v in cls.packages.items() if path.startswith(d + os.sep)), None)
        if spec is None or not os.path.isfile(path):
            return None
        for other in _CACHE_IMPL._locator_classes:
            if other is cls:
                continue
            inner = other.from_function(py_func, py_file)
            if inner is not None:
                stamp = cls.stamps.get(path)
                if stamp is None:
                    stamp = cls.stamps[path] = dependency_stamp(spec[0], path, spec[1]) + spec[2]
                return cls(inner, stamp)
        return None

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return (self._inner.get_source_stamp(), self._dep_stamp)

    def get_disambiguator(self):
        return self._inner.get_disambiguator()


def install(package_dir: str, top: str, followed: tuple[str, ...], variant: str = "") -> None:
    """Stamp the cache of every function defined in a file under package_dir with the files it imports
    from the followed directories (top: the top-level package's directory, for absolute and relative
    imports) and `variant` (a setting that changes the generated code without changing a file). Call
    before the package's modules define their functions (Numba picks a function's locator when it is
    decorated). A user's NUMBA_CACHE_LOCATOR_CLASSES replaces the list, this too."""
    StampedLocator.packages[os.path.abspath(package_dir)] = (os.path.abspath(top), tuple(followed), variant)
    classes = _CACHE_IMPL._locator_classes
    if StampedLocator not in classes:
        classes.insert(0, StampedLocator)
