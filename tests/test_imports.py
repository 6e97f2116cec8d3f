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
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import ipt_data

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


# ipt_data's layers, as CONTRIBUTING.md lists them (modules not listed sit around them all).
LAYERS = (
    "tasks sources decode imresize superres noise rain seeding patches metrics png safety",
    "benchsets rainstats",
    "layout manifest remote card transfer verify hub",
    "worker shardwriter distributor build",
)


def test_no_ipt_data_layer_imports_a_later_one():
    layer = {f"ipt_data.{m}": i for i, names in enumerate(LAYERS) for m in names.split()}
    graph = import_graph()
    upward = [(m, d) for m in layer for d in graph[m] if layer.get(d, -1) > layer[m]]
    assert upward == []


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


# ipt_data's public API: the names of ipt_data.__all__, imported from the package itself
# (docs/python-api.md). ipt_train uses nothing else; the benchmark and pipeline scripts take every
# public name from there too, and only the internal stages they time from their modules.
SCRIPT_FOLDERS = ("benchmarks", "pipelines")
# What importing one light public name, or the model, must not load.
HEAVY = {"cv2", "fsspec", "ray", "click", "numpy", "PIL", "aiohttp", "deflate"}


def ipt_data_imports(source: str, filename: str) -> list[tuple[str, str]]:
    """(module, name) for every name imported from ``ipt_data`` or one of its modules, anywhere
    in ``source``; ``import ipt_data...`` gives (that module, "")."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if module.partition(".")[0] == "ipt_data":
                found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.partition(".")[0] == "ipt_data"]
    return found


def script_imports(path: Path) -> list[tuple[str, str]]:
    """:func:`ipt_data_imports` of a script: a Python file whole, any other (a shell script
    running Python from a here-document) line by line."""
    text = path.read_text()
    if path.suffix == ".py":
        return ipt_data_imports(text, str(path))
    lines = [line.strip() for line in text.splitlines()]
    return [
        pair
        for line in lines
        if line.startswith(("from ipt_data", "import ipt_data"))
        for pair in ipt_data_imports(line, str(path))
    ]


def test_ipt_train_imports_only_public_names_from_the_package():
    modules = project_modules()
    offending = [
        f"{module}: from {source} import {name or '*'}"
        for module, path in modules.items()
        if module.partition(".")[0] == "ipt_train"
        for source, name in ipt_data_imports(path.read_text(), str(path))
        if source != "ipt_data" or name not in ipt_data.__all__
    ]
    assert not offending, "ipt_train must use `from ipt_data import <public name>`"
    used = {
        name
        for module, path in modules.items()
        if module.partition(".")[0] == "ipt_train"
        for _, name in ipt_data_imports(path.read_text(), str(path))
    }
    assert {"UserError", "read_shard", "read_set_manifest", "get_task"} <= used  # the walk works


def test_scripts_take_public_names_from_the_package():
    scripts = [
        path
        for folder in SCRIPT_FOLDERS
        for path in sorted((REPO / folder).iterdir())
        if path.is_file() and path.suffix != ".md"
    ]
    pairs = {path.name: script_imports(path) for path in scripts}
    offending = [
        f"{script}: from {source} import {name}"
        for script, imports in pairs.items()
        for source, name in imports
        if (source == "ipt_data" and name not in ipt_data.__all__)
        or (source != "ipt_data" and ipt_data._MODULE_OF.get(name) == source)
    ]
    assert not offending, "public names come from `ipt_data` itself"
    assert ("ipt_data", "TASKS") in pairs["loader"]  # a shell script's here-document is read
    assert ("ipt_data.png", "up_filtered") in pairs["png_codecs.py"]


def test_every_public_name_resolves_to_the_module_that_defines_it():
    """``__all__``, the lazy table and the type checkers' imports name the same (module, name)
    pairs; each name is the very object of its module, also once every submodule is loaded (a
    submodule of the same name would shadow it); dir() lists them; other names do not exist."""
    table = ipt_data._MODULE_OF
    assert sorted(ipt_data.__all__) == sorted(table)
    assert len(set(ipt_data.__all__)) == len(ipt_data.__all__)
    init = REPO / "ipt_data" / "__init__.py"
    tree = ast.parse(init.read_text(), str(init))
    (checking,) = [node for node in tree.body if isinstance(node, ast.If)]
    assert ast.unparse(checking.test) == "TYPE_CHECKING"
    declared = {
        alias.name: statement.module for statement in checking.body for alias in statement.names
    }
    assert declared == table
    assert set(ipt_data.__all__) <= set(dir(ipt_data))
    for module in sorted(name for name in project_modules() if name.startswith("ipt_data.")):
        importlib.import_module(module)
    for name, module in table.items():
        assert getattr(ipt_data, name) is getattr(importlib.import_module(module), name), name
    assert not hasattr(ipt_data, "shard_name")  # a name of ipt_data.layout, not public
    with pytest.raises(ImportError, match="ChunkJob"):
        from ipt_data import ChunkJob  # noqa: F401


def loaded_after(statement: str) -> set[str]:
    """The top-level packages of HEAVY that ``statement`` loads in a fresh interpreter."""
    script = f"import sys\n{statement}\nprint(sorted({{m.partition('.')[0] for m in sys.modules}}))"
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return set(ast.literal_eval(run.stdout.strip())) & HEAVY


def test_a_light_public_name_the_model_and_the_cli_load_no_heavy_package():
    """``from ipt_data import UserError`` loads its module alone; the model (which needs only
    that name) imports neither click, Ray, OpenCV nor fsspec; ``ipt-data``'s command line reads
    its defaults from ipt_data.configs without the build's imports (``--help`` stays fast)."""
    assert loaded_after("from ipt_data import UserError, __version__") == set()
    assert loaded_after("import ipt_data") == set()
    assert loaded_after("import ipt_data.cli") == {"click"}
    assert loaded_after("import ipt_train.model") <= {"numpy"}  # torch imports NumPy itself
    assert "cv2" in loaded_after("from ipt_data import decode_image")  # the check can fail
