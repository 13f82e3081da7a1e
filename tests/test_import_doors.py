"""The pack's import graph: doors open one way and nothing imports in a circle.

Every ``import`` / ``from ... import`` statement of every module counts, at module level or
inside a function (a function-level import is still a dependency, just a late one), with
relative imports resolved against the importing module's package.  ``from pkg import name``
is an edge to ``pkg.name`` when that is a module of the pack, else to ``pkg``.  A relative
module name written as a string (``".tab.cli"`` handed to ``importlib.import_module``, as the
``wadi`` command table and the tab's kind table do) is an edge too.

The rules (the brief's "one-way doors"):

* no circles among the pack's modules;
* ``lorad/`` (the format and its math) imports neither ``nodes/`` nor ``trainer/``, nor
  ComfyUI or Gradio;
* ``nodes/`` (the ComfyUI adapter) imports ``lorad/`` and, of the trainer, only the neutral
  jobs package ``trainer/jobs/`` (job store, runner, progress) - never ``trainer/tab/``;
* ``trainer/jobs/`` imports nothing else of the pack, nor torch or Gradio (ComfyUI's server
  imports it through the sidebar routes).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "wadi_lorad"  # the name tests and scripts import the checkout under
SKIP_DIRS = {"tests", ".venv", ".git", "node_modules", "__pycache__", ".ci"}
COMFY_OR_GRADIO = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution",
                   "gradio", "gradio_client"}


def pack_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name (``""`` for the pack's own ``__init__``) -> (file, is a package)."""
    mods: dict[str, tuple[Path, bool]] = {}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (f, is_pkg)
    return mods


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def imports_of(name: str, path: Path, is_pkg: bool, mods: dict) -> tuple[set[str], set[str]]:
    """(pack modules, external top-level names) imported anywhere in ``path``."""
    package = name if is_pkg else name.rpartition(".")[0]
    internal: set[str] = set()
    external: set[str] = set()

    def absolute(dotted: str) -> str | None:
        """A pack module for an absolute name (``wadi_lorad.x.y`` or, from bench/scripts, ``x.y``)."""
        if dotted == PACKAGE or dotted.startswith(PACKAGE + "."):
            return dotted[len(PACKAGE) + 1:]
        return None

    def add(target: str, names: list[str]) -> None:
        hit = False
        for n in names:
            if _join(target, n) in mods:
                internal.add(_join(target, n))
                hit = True
        if not hit or any(_join(target, n) not in mods for n in names):
            internal.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = absolute(alias.name)
                if target is None:
                    external.add(alias.name.partition(".")[0])
                else:
                    internal.add(target)
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                base = package.split(".") if package else []
                if node.level - 1 > len(base):
                    raise AssertionError(f"{path}: relative import beyond the pack (level {node.level})")
                base = base[: len(base) - (node.level - 1)]
                add(_join(*base, node.module or ""), names)
            else:
                target = absolute(node.module or "")
                if target is None:
                    external.add((node.module or "").partition(".")[0])
                else:
                    add(target, names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"\.+\w[\w.]*", node.value):
            # A relative module name as a string (``importlib.import_module(".cmd_demo", __package__)``,
            # the trainer's command and config tables): a dependency too, when it names a pack module.
            level = len(node.value) - len(node.value.lstrip("."))
            base = package.split(".") if package else []
            target = _join(*base[: len(base) - (level - 1)], node.value[level:])
            if level - 1 <= len(base) and target in mods:
                internal.add(target)
    internal = {m for m in internal if m in mods}
    internal.discard(name)
    return internal, external


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = pack_modules(root)
    graph, external = {}, {}
    for name, (path, is_pkg) in mods.items():
        graph[name], external[name] = imports_of(name, path, is_pkg, mods)
    return graph, external


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def reachable(graph: dict[str, set[str]], starts: list[str]) -> dict[str, str]:
    """Every module reachable from ``starts`` -> the module that first imported it."""
    seen = {s: s for s in starts}
    todo = list(starts)
    while todo:
        v = todo.pop()
        for w in graph[v]:
            if w not in seen:
                seen[w] = v
                todo.append(w)
    return seen


def _under(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


GRAPH, EXTERNAL = import_graph(ROOT)


def test_the_scan_sees_the_pack():
    # Guards the test itself: a scan that found nothing would pass every rule below.
    assert {"lorad.io", "nodes.routes_tab", "trainer.distill", "trainer.jobs", "trainer.jobs.runner",
            "trainer.tab.app"} <= set(GRAPH)
    assert "trainer.jobs.runner" in GRAPH["nodes.routes_tab"]
    assert "lorad.functional" in GRAPH["lorad.inject"]  # ``from . import functional``
    assert "trainer.export" in GRAPH["trainer.distill"]  # a function-level import
    assert "trainer.tab.cli" in GRAPH["trainer.cli"]  # a module name given to importlib
    assert "trainer.config" in GRAPH["trainer.tab.kinds"]  # "..config" in the tab's kind table
    assert "torch" in EXTERNAL["lorad.functional"]


def test_the_rules_catch_what_they_forbid(tmp_path):
    """A tree that breaks each rule (function-level, relative, absolute) is caught."""
    files = {
        "__init__.py": "",
        "lorad/__init__.py": "",
        "lorad/a.py": "def f():\n    from ..nodes import b\n    import gradio\n",
        "nodes/__init__.py": "",
        "nodes/b.py": "from ..trainer.tab import app\n",
        "trainer/__init__.py": "",
        "trainer/tab/__init__.py": "",
        "trainer/tab/app.py": "def g():\n    from wadi_lorad.lorad import a\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph, external = import_graph(tmp_path)
    assert graph["lorad.a"] == {"nodes.b"} and "gradio" in external["lorad.a"]
    assert graph["nodes.b"] == {"trainer.tab.app"}
    assert graph["trainer.tab.app"] == {"lorad.a"}
    assert circles(graph) == [["lorad.a", "nodes.b", "trainer.tab.app"]]


def test_no_import_circles():
    assert circles(GRAPH) == [], "modules that import each other (function-level imports count)"


def test_lorad_imports_neither_nodes_trainer_comfy_nor_gradio():
    bad = {m: sorted(t for t in GRAPH[m] if not _under(t, "lorad")) for m in GRAPH if _under(m, "lorad")}
    assert {m: t for m, t in bad.items() if t} == {}
    ext = {m: sorted(EXTERNAL[m] & COMFY_OR_GRADIO) for m in GRAPH if _under(m, "lorad")}
    assert {m: e for m, e in ext.items() if e} == {}


def test_nodes_reach_only_lorad_and_the_jobs_package():
    nodes = [m for m in GRAPH if _under(m, "nodes")]
    allowed = ("nodes", "lorad", "trainer.jobs")
    seen = reachable(GRAPH, nodes)
    bad = {m: f"imported by {by}" for m, by in seen.items()
           if not any(_under(m, a) for a in allowed) and m != "trainer"}  # trainer/__init__ is empty
    assert bad == {}
    assert not any(_under(m, "trainer.tab") for m in seen)


def test_jobs_package_is_neutral():
    jobs = [m for m in GRAPH if _under(m, "trainer.jobs")]
    assert len(jobs) >= 4
    for m in jobs:
        assert all(_under(t, "trainer.jobs") for t in GRAPH[m]), (m, GRAPH[m])
        assert not EXTERNAL[m] & ({"torch", "diffusers", "accelerate"} | COMFY_OR_GRADIO), (m, EXTERNAL[m])
