"""The house keeps its shape: imports point one way and go round in no circle.

Every module of the package (edgeinfer/, and tui/ as it is installed: edgeinfer.tui) is parsed with `ast`,
and every import in it counts: at the top, inside functions (lazy imports), under `if`/`try`, relative
or absolute. Two rules:

1. No circle between modules. An import names the module it reads (`from .vocab import Vocab` reads
   edgeinfer.tokenizer.vocab; `from . import native` reads edgeinfer.kernels.native, a submodule; `from
   .. import get_backend` reads the package's __init__). Importing a submodule also runs its package's
   __init__, but that implicit step is not an edge: a package that re-exports its submodules is no circle.
2. No upward import between the layers of DESIGN.md:

       gguf(0) -> quant(1) -> kernels(2) -> nn(3) -> arch(4) -> engine(5) -> faces(6)

   faces: api, cli, repl, chat, info, bench, server, tui, tools, __main__ and the package's own
   __init__ (`edgeinfer.load` is the public facade). A layer may import the layers below it.
   Beside the stack sit packages that depend on (almost) nothing and are read from higher up:
   tokenizer (only gguf, as DESIGN.md says; read from engine up), energy (meters: nothing; read from
   engine up), models (the registry and the download cache: nothing; read from the faces).
   BASE modules, leaf utilities with no edgeinfer import but each other, may be imported from anywhere:
   edgeinfer.errors (the exception classes), edgeinfer.system (thread counts), edgeinfer.progress
   (progress bars, byte formatting), edgeinfer.fsutil (atomic file writes).

`python tests/test_layers.py` prints the graph's circles and upward imports without failing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (directory, the package name it is installed as: pyproject.toml's package-dir)
SOURCES = (
    (ROOT / "edgeinfer", "edgeinfer"),
    (ROOT / "tui", "edgeinfer.tui"),
    (ROOT / "models", "edgeinfer.models.data"),
)

BASE = {"edgeinfer.errors", "edgeinfer.system", "edgeinfer.progress", "edgeinfer.fsutil"}
# compiled extensions (setup.py), present or not: the layer each belongs to
EXTENSIONS = {"edgeinfer._native": "kernels"}
STACK = ("gguf", "quant", "kernels", "nn", "arch", "engine", "faces")
FACES = {"api", "cli", "repl", "chat", "info", "bench", "server", "tui", "tools", "toolcalls", "gemma_calls", "__main__"}
# packages beside the stack: what each may import (besides BASE), and the lowest layer that may read it
SIDE = {
    "tokenizer": ({"gguf"}, "engine"),
    "energy": (set(), "engine"),
    "models": (set(), "faces"),
}


def modules() -> dict[str, Path]:
    """Every module's dotted name -> its file."""
    found = {}
    for folder, package in SOURCES:
        nested = [f for f, _ in SOURCES if f != folder and f.is_relative_to(folder)]
        for path in sorted(folder.rglob("*.py")):
            if any(path.is_relative_to(f) for f in nested):
                continue
            rel = path.relative_to(folder).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The edgeinfer modules `name` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        # the module itself, else the nearest enclosing module that exists (a name from a package)
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "edgeinfer" or alias.name.startswith("edgeinfer."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            elif node.module and (node.module == "edgeinfer" or node.module.startswith("edgeinfer.")):
                module = node.module
            else:
                continue
            for alias in node.names:  # `from pkg import submodule` reads the submodule
                if f"{module}.{alias.name}" in known:
                    add(f"{module}.{alias.name}")
                else:
                    add(module)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found) | set(EXTENSIONS)
    g = {name: imports(name, path, known) for name, path in found.items()}
    g.update({name: set() for name in EXTENSIONS})
    return g


def group(module: str) -> str:
    """The layer or side package a module belongs to ("base" for BASE)."""
    if module in BASE:
        return "base"
    if module in EXTENSIONS:
        return EXTENSIONS[module]
    parts = module.split(".")
    if len(parts) == 1:
        return "faces"  # edgeinfer/__init__.py: the public facade
    top = parts[1]
    if top in FACES:
        return "faces"
    if top in STACK or top in SIDE:
        return top
    raise AssertionError(f"{module}: place edgeinfer.{top} in a layer (tests/test_layers.py)")


def allowed(src: str, dst: str) -> bool:
    if dst == "base":
        return True
    if src == "base":
        return False
    if src == dst:
        return True
    if src in SIDE:
        return dst in SIDE[src][0]
    level = STACK.index(src)
    if dst in SIDE:
        return level >= STACK.index(SIDE[dst][1])
    return STACK.index(dst) < level


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} ({group(src)}) imports {dst} ({group(dst)})"
        for src, targets in g.items()
        for dst in targets
        if not allowed(group(src), group(dst))
    )


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(found)


def describe(g: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    edges = sorted(f"{a} -> {b}" for a in component for b in g[a] if b in members)
    return "circle: " + ", ".join(component) + "\n    " + "\n    ".join(edges)


# -- the tests ---------------------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    for name in graph():
        group(name)


def test_the_parser_sees_every_kind_of_import(tmp_path):
    src = tmp_path / "edgeinfer" / "engine"
    src.mkdir(parents=True)
    (src / "mod.py").write_text(
        "import edgeinfer.gguf.reader\n"
        "from ..errors import EdgeInferError\n"
        "from . import sampling\n"
        "def f():\n"
        "    from ..api import load\n"
        "    try:\n"
        "        from edgeinfer.nn.kv import KV_TYPES\n"
        "    except ImportError:\n"
        "        pass\n"
    )
    known = {"edgeinfer", "edgeinfer.errors", "edgeinfer.api", "edgeinfer.gguf", "edgeinfer.gguf.reader",
             "edgeinfer.engine", "edgeinfer.engine.mod", "edgeinfer.engine.sampling", "edgeinfer.nn",
             "edgeinfer.nn.kv"}  # fmt: skip
    got = imports("edgeinfer.engine.mod", src / "mod.py", known)
    assert got == {"edgeinfer.gguf.reader", "edgeinfer.errors", "edgeinfer.engine.sampling", "edgeinfer.api",
                   "edgeinfer.nn.kv"}  # fmt: skip
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(g) == [["a", "b", "c"]]
    assert not allowed("engine", "faces") and allowed("faces", "engine") and not allowed("tokenizer", "nn")
    assert allowed("tokenizer", "gguf") and not allowed("nn", "tokenizer") and allowed("kernels", "base")


def test_no_upward_imports():
    bad = upward_imports(graph())
    assert not bad, "upward imports (see tests/test_layers.py for the layers):\n" + "\n".join(bad)


def test_no_circles():
    g = graph()
    found = circles(g)
    assert not found, "import circles (lazy imports count):\n" + "\n".join(describe(g, c) for c in found)


def test_pyproject_lists_every_package():
    """pyproject.toml lists the packages by hand (package-dir maps tui/ and models/ into edgeinfer): a
    package missing from the list would be missing from every install."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert set(config["packages"]) == on_disk
    for package, folder in config["package-dir"].items():
        assert (ROOT / folder, package) in SOURCES


if __name__ == "__main__":
    g = graph()
    for c in circles(g):
        print(describe(g, c))
    for line in upward_imports(g):
        print("upward:", line)
