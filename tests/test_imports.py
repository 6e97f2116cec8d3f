"""The import graph of ``ipt_data`` and ``ipt_train``, read from the source with ``ast``: no
module of either package depends on itself through others, and ``ipt_data`` never reaches
``ipt_train`` or torch.

Which imports count: every ``import`` and ``from ... import`` statement anywhere in a module,
at module level, under ``if TYPE_CHECKING:``, and inside functions. A type-checking import is
still a dependency a reader must follow, and a deferred import inside a function is still one
the running code takes; a cycle hidden in either is still a cycle. An import names the module
it loads: ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the
project, else to ``pkg``; the package ``__init__`` modules Python runs on the way are not
edges (a package importing its own submodules is how packages are built, not a cycle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ipt_data", "ipt_train")


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of both packages (a package by its ``__init__``)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """The absolute dotted names every import statement of the module names (see the module
    doc): ``a.b`` for ``import a.b``, ``a.b.c`` for ``from a.b import c``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 packages
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.update(f"{base}.{alias.name}".lstrip(".") for alias in node.names)
    return names


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name loads: the name itself where it is a module, else
    (``pkg.attribute``) its package or module; None outside the project."""
    for candidate in (name, name.rpartition(".")[0]):
        if candidate in modules:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules its imports load."""
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        targets = {resolve(name, modules) for name in imported_names(module, path)}
        graph[module] = targets - {None, module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the path ``[a, b, ..., a]``, or None where there is none."""
    state: dict[str, str] = {}  # node -> "open" (on the current path) or "done"

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return [*path[path.index(successor) :], successor]
            if successor not in state:
                found = visit(successor, [*path, successor])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}) is None


def test_relative_and_type_checking_imports_are_read(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ipt_data.layout import ChunkStats\n"
        "def f():\n    from . import remote\n    from .. import ipt_train\n"
    )
    names = imported_names("ipt_data.m", module)
    assert {"ipt_data.layout.ChunkStats", "ipt_data.remote", "ipt_train"} <= names


def test_no_import_cycle_among_the_project_modules():
    graph = import_graph()
    assert graph["ipt_data.build"] >= {"ipt_data.layout", "ipt_data.manifest", "ipt_data.remote"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_ipt_data_imports_neither_ipt_train_nor_torch():
    """From the source (any import, wherever it stands), and in a fresh interpreter that imports
    every module of ipt_data."""
    modules = project_modules()
    data_modules = sorted(name for name in modules if name.partition(".")[0] == "ipt_data")
    for module in data_modules:
        roots = {name.partition(".")[0] for name in imported_names(module, modules[module])}
        assert not roots & {"ipt_train", "torch", "torchvision", "webdataset"}, module
    script = (
        "import importlib, sys\n"
        f"for name in {data_modules!r}:\n    importlib.import_module(name)\n"
        "print(sorted(n for n in sys.modules if n.partition('.')[0] in ('torch', 'ipt_train')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]"
