"""The package's layout: imports go one way, and no module imports itself back through others.

Every ``import`` in ``src/smlrec`` is read with ``ast`` (module level, inside functions and under
``TYPE_CHECKING`` alike; relative imports resolved). Layers, lowest first; a module may import
from its own group and from any lower layer, never from a higher layer or a sibling group:

    0  the package root (__version__), errors, random, atomic
    1  config, data      one layer: config reads Plan from data/periods.py, and data/loading.py
                         names config's settings types (a type-only import)
    2  models
    3  strategies
    4  evaluation
    5  experiment | production | testing   three groups: none imports another (testing: the
                                   strategy contract suite plug-in authors import)
    6  report                      reads experiment's results directory
    7  api                         smlrec.replay(): the replay from Python, returning DataFrames
    8  cli, __main__               argument parsing over the api; nothing imports it

A new top-level module or package fails here until it is given a layer below.

One exception, listed in LAZY_EXPORTS: the package root re-exports the public API
(``smlrec.replay``) through a module ``__getattr__``, imported on first use, so ``import smlrec``
stays light and the lower layers never load it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "smlrec"

LAYERS: list[list[set[str]]] = [
    [{PACKAGE, "errors", "random", "atomic"}],
    [{"config", "data"}],
    [{"models"}],
    [{"strategies"}],
    [{"evaluation"}],
    [{"experiment"}, {"production"}, {"testing"}],
    [{"report"}],
    [{"api"}],
    [{"cli", "__main__"}],
]

LAZY_EXPORTS = {(PACKAGE, f"{PACKAGE}.api")}
"""(importer, imported) edges allowed against the layering: the root's lazy public API."""


def module_names(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path], package: str = PACKAGE) -> list[tuple[str, int]]:
    """(imported module of the package, line) for every import statement in the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from X import Y``: Y is a submodule when there is one by that name, else a name in X.
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue
            while target not in modules and "." in target:  # ``import smlrec.x.y`` where y is a name
                target = target.rsplit(".", 1)[0]
            found.append((target, node.lineno))
    return found


def import_graph(root: Path = SRC, package: str = PACKAGE) -> dict[str, list[tuple[str, int]]]:
    modules = module_names(root, package)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}


def group_of(module: str, package: str = PACKAGE) -> str:
    """The top-level part a module belongs to: ``smlrec.data.log`` -> ``data``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else package


def rank_of(group: str, layers: list[list[set[str]]]) -> int:
    for rank, groups in enumerate(layers):
        if any(group in g for g in groups):
            return rank
    raise KeyError(group)


def same_group(a: str, b: str, layers: list[list[set[str]]]) -> bool:
    return any(a in g and b in g for groups in layers for g in groups)


def unplaced(graph: dict, layers: list[list[set[str]]] = LAYERS, package: str = PACKAGE) -> list[str]:
    placed = {name for groups in layers for g in groups for name in g}
    return sorted({group_of(m, package) for m in graph} - placed)


def layer_violations(graph: dict, layers: list[list[set[str]]] = LAYERS,
                     package: str = PACKAGE) -> list[str]:
    """Imports of a higher layer, or of another group in the same layer."""
    problems = []
    for module, targets in graph.items():
        mine = group_of(module, package)
        for target, line in targets:
            if (module, target) in LAZY_EXPORTS:
                continue
            theirs = group_of(target, package)
            if same_group(mine, theirs, layers):
                continue
            if rank_of(theirs, layers) >= rank_of(mine, layers):
                problems.append(f"{module} (line {line}) imports {target}: {mine} (layer "
                                f"{rank_of(mine, layers)}) may not import {theirs} (layer "
                                f"{rank_of(theirs, layers)})")
    return problems


def find_cycle(graph: dict) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, iterative)."""
    edges = {m: sorted({t for t, _ in targets if t in graph and (m, t) not in LAZY_EXPORTS})
             for m, targets in graph.items()}
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(edges[start])]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges[nxt]))
    return None


# ----------------------------------------------------------------------------------------------
# The package

@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_the_known_imports(graph):
    """A check on the reader: known imports of each kind appear as edges."""
    edges = {(m, t) for m, targets in graph.items() for t, _ in targets}
    assert ("smlrec.strategies.sml", "smlrec.models.bases") in edges              # from ..models.bases
    assert ("smlrec.data", "smlrec.data.formats") in edges                        # from . import formats
    assert ("smlrec.experiment.results", "smlrec") in edges                       # from .. import __version__
    assert ("smlrec.models.fused_mf", "smlrec.models.losses") in edges            # inside a function
    assert ("smlrec.data.loading", "smlrec.config") in edges                      # under TYPE_CHECKING
    assert ("smlrec.cli", "smlrec.cli.replay") in edges                           # from . import replay
    assert ("smlrec.strategies.factory", "smlrec.strategies") in edges            # a package's name


def test_every_top_level_part_has_a_layer(graph):
    assert unplaced(graph) == [], "give these a layer in LAYERS (tests/test_layout.py)"


def test_imports_go_one_way(graph):
    problems = layer_violations(graph)
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_imports_the_cli(graph):
    importers = sorted({m for m, targets in graph.items() for t, _ in targets
                        if group_of(t) == "cli" and group_of(m) not in ("cli", "__main__")})
    assert importers == []


# ----------------------------------------------------------------------------------------------
# The checks themselves, on a made-up package

def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_catch_a_backwards_import_and_a_cycle(tmp_path):
    write_package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from ..high import b\n",         # function level, backwards
        "high/__init__.py": "from . import b\n",
        "high/b.py": "from ..low.a import f\nfrom .c import g\n",
        "high/c.py": "import pkg.high.b\n\ndef g():\n    pass\n",        # b -> c -> b
        "side/__init__.py": "from pkg.other import x\n",                 # same layer, other group
        "other/__init__.py": "x = 1\n",
    })
    layers = [[{"pkg", "low"}], [{"high"}, {"side"}, {"other"}]]
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.low.a"] == [("pkg.high.b", 2)]
    problems = layer_violations(graph, layers, "pkg")
    assert len(problems) == 2
    assert problems[0].startswith("pkg.low.a (line 2) imports pkg.high.b: low (layer 0) may not "
                                  "import high (layer 1)")
    assert problems[1].startswith("pkg.side (line 1) imports pkg.other")
    assert find_cycle(graph) in (["pkg.high.b", "pkg.high.c", "pkg.high.b"],
                                 ["pkg.low.a", "pkg.high.b", "pkg.low.a"])
    assert unplaced(graph, [[{"pkg"}]], "pkg") == ["high", "low", "other", "side"]


def test_the_checks_pass_a_clean_package(tmp_path):
    write_package(tmp_path, {"__init__.py": "", "low.py": "import os\n",
                             "high/__init__.py": "from ..low import os\nfrom . import mod\n",
                             "high/mod.py": "from pkg import low\n"})
    graph = import_graph(tmp_path, "pkg")
    assert layer_violations(graph, [[{"pkg", "low"}], [{"high"}]], "pkg") == []
    assert find_cycle(graph) is None
