"""The package's layout: imports go one way, files import no cycles, units keep their privates.

Read with :mod:`ast`, never imported. A *unit* is the first component under the package
(``probe_sae/stream/cache.py`` -> ``stream``, ``probe_sae/cli.py`` -> ``cli``); the package's own
``__init__.py`` is the unit ``__init__``, which is lazy and sits with the applications.

What counts as an import: absolute ``import`` / ``from`` imports, relative imports resolved against
the importing file's package, imports inside functions, and imports under ``if TYPE_CHECKING:``.

* the order (:func:`layer_violations`): every import counts, TYPE_CHECKING ones too, because an
  annotation naming a unit to the right is a dependency on it all the same. Only
  ``probe_sae/__init__.py`` may name every unit under TYPE_CHECKING, and it may because it is the
  top of the order, not by exception.
* cycles (:func:`import_cycles`): only the imports that run when a file is imported, i.e. not
  those inside functions and not those under TYPE_CHECKING.
* privates (:func:`private_violations`): every import; a shared leaf (``_atomic``) is exempt.

Strings handed to ``importlib.import_module`` are not read (only ``probe_sae/__init__.py`` does
that, for its lazy exports).
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import probe_sae

#: The order, left to right: a unit imports from its own unit and units of tiers to its left.
#: Leaves (the first tier) import nothing from the package; the applications (the last tier, with
#: the package ``__init__``) may import each other. Written once; it must match the docstring of
#: probe_sae/__init__.py, which ``test_order_matches_the_package_docstring`` checks.
ORDER: list[tuple[str, ...]] = [
    ("constants", "config", "_atomic", "allocator"),
    ("hub",),
    ("data",),
    ("models",),
    ("organism",),
    ("hooks",),
    ("stream",),
    ("saes",),
    ("metrics",),
    ("train",),
    ("interventions",),
    ("plotting",),
    ("run", "report", "browser", "bench", "demo", "cli"),
]
#: private units any unit may import
SHARED = ("_atomic",)
TOP = "__init__"  # the package's __init__.py: lazy, sits with the applications

PACKAGE_DIR = Path(probe_sae.__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# reading the imports


@dataclass(frozen=True)
class Import:
    """One imported module (or one name from a module) of the package, where it is imported."""

    file: Path  # the importing file
    line: int
    module: str  # the imported module, dotted, resolved (``probe_sae.stream.cache``)
    name: str | None  # ``from module import name`` where name is not a submodule, else None
    runs_on_import: bool  # at module level and not under TYPE_CHECKING
    type_checking: bool

    @property
    def target(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module


def module_name(root: Path, path: Path) -> str:
    """``root/a/b.py`` -> ``pkg.a.b``; ``root/a/__init__.py`` -> ``pkg.a``."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_file(root: Path, module: str) -> Path | None:
    """The file of a module of the package, or None when there is none."""
    parts = module.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def unit_of(module: str) -> str:
    """``pkg.stream.cache`` -> ``stream``; ``pkg`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else TOP


def display(root: Path, path: Path) -> str:
    return path.relative_to(root.parent).as_posix()


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(
    node: ast.AST, in_function: bool = False, type_checking: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import under ``node`` with (inside a function, under TYPE_CHECKING)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function, type_checking
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(child, True, type_checking)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), in_function, False)
        else:
            yield from _walk(child, in_function, type_checking)


def imports_of(root: Path, path: Path) -> list[Import]:
    """The imports of the package that ``path`` (a file under ``root``) makes."""
    package = root.name
    here = module_name(root, path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the file's package
    found = []
    for node, in_function, type_checking in _walk(ast.parse(path.read_text(), str(path))):
        where = dict(
            file=path,
            line=node.lineno,
            runs_on_import=not in_function and not type_checking,
            type_checking=type_checking,
        )
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    found.append(Import(module=alias.name, name=None, **where))
            continue
        if node.level:
            base = here[: len(here) - node.level + 1]
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
        else:
            module = node.module or ""
        if module != package and not module.startswith(package + "."):
            continue
        for alias in node.names:
            submodule = f"{module}.{alias.name}"
            if alias.name != "*" and module_file(root, submodule) is not None:
                found.append(Import(module=submodule, name=None, **where))
            else:
                found.append(Import(module=module, name=alias.name, **where))
    return found


def all_imports(root: Path) -> list[Import]:
    return [imp for path in python_files(root) for imp in imports_of(root, path)]


# ---------------------------------------------------------------------------------------------
# the three checks


def layer_violations(root: Path, order: Sequence[Sequence[str]] = ORDER) -> list[str]:
    """``file:line imports module (unit X is right of unit Y)`` for every import against the order,
    and a line for every unit the order does not name."""
    tier = {unit: i for i, units in enumerate(order) for unit in units}
    tier[TOP] = len(order) - 1
    last = len(order) - 1
    problems = []
    unknown = sorted(
        {unit_of(module_name(root, p)) for p in python_files(root)} - set(tier),
    )
    for unit in unknown:
        problems.append(
            f"{root.name}.{unit}: unit {unit!r} is not in the order; add it to ORDER in "
            f"tests/test_layout.py and to the docstring of {root.name}/__init__.py"
        )
    for imp in all_imports(root):
        mine, theirs = unit_of(module_name(root, imp.file)), unit_of(imp.module)
        if mine not in tier:
            continue  # reported above
        where = f"{display(root, imp.file)}:{imp.line} imports {imp.target}"
        if theirs not in tier:
            problems.append(f"{where} (unit {theirs} is not in the order; add it to the order)")
        elif mine == theirs or tier[theirs] < tier[mine] or tier[mine] == tier[theirs] == last:
            continue
        elif tier[theirs] == tier[mine]:
            problems.append(f"{where} (unit {theirs} is beside unit {mine}, not left of it)")
        else:
            problems.append(f"{where} (unit {theirs} is right of unit {mine})")
    return problems


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _cycle_through(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one component (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if succ not in parent:
                    parent[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError("not a cycle")  # pragma: no cover


def import_cycles(root: Path) -> list[str]:
    """One line per cycle of files importing each other when imported (``a.py:3 -> b.py:7 ->
    a.py``): imports inside functions and under TYPE_CHECKING do not count."""
    graph: dict[str, set[str]] = {display(root, p): set() for p in python_files(root)}
    lines: dict[tuple[str, str], int] = {}
    for imp in all_imports(root):
        target = module_file(root, imp.module)
        if not imp.runs_on_import or target is None or target == imp.file:
            continue
        edge = (display(root, imp.file), display(root, target))
        graph[edge[0]].add(edge[1])
        lines.setdefault(edge, imp.line)
    problems = []
    for component in _strongly_connected(graph):
        if len(component) > 1:
            cycle = _cycle_through(graph, component[0], set(component))
            steps = [f"{a}:{lines[a, b]}" for a, b in itertools.pairwise(cycle)]
            problems.append(" -> ".join([*steps, cycle[-1]]) + f"  ({len(component)} files)")
    return problems


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_violations(root: Path, shared: Sequence[str] = SHARED) -> list[str]:
    """``file:line imports module`` for every private module or name of another unit imported."""
    problems = []
    for imp in all_imports(root):
        mine, theirs = unit_of(module_name(root, imp.file)), unit_of(imp.module)
        if mine == theirs or theirs in shared:
            continue
        inner = imp.module.split(".")[2:]  # below the unit
        if any(_private(p) for p in inner) or (imp.name is not None and _private(imp.name)):
            problems.append(
                f"{display(root, imp.file)}:{imp.line} imports {imp.target} "
                f"(private to unit {theirs})"
            )
    return problems


def order_in_docstring(init: Path) -> list[tuple[str, ...]]:
    """The tiers written in the package docstring: the leaves line, then one per ``→`` line."""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    lines = [line.strip() for line in doc.splitlines()]
    units = re.compile(r"^(?:→\s*)?(\w+(?:,\s*\w+)*)(?:\s{2,}|$)")
    arrows = [i for i, line in enumerate(lines) if line.startswith("→")]
    if not arrows:
        return []
    tiers = []
    for line in [lines[arrows[0] - 1], *(lines[i] for i in arrows)]:
        match = units.match(line)
        tiers.append(tuple(u.strip() for u in match.group(1).split(",")) if match else (line,))
    return tiers


def report(problems: list[str], what: str) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------
# the real package


def test_order_matches_the_package_docstring():
    written = order_in_docstring(PACKAGE_DIR / "__init__.py")
    assert written == ORDER, (
        "ORDER in tests/test_layout.py and the order in the docstring of probe_sae/__init__.py "
        f"differ; make them the same.\n docstring: {written}\n test:      {ORDER}"
    )


def test_imports_follow_the_order():
    problems = layer_violations(PACKAGE_DIR)
    assert not problems, report(problems, "imports against the order of probe_sae/__init__.py")


def test_no_import_cycles_between_files():
    problems = import_cycles(PACKAGE_DIR)
    assert not problems, report(problems, "import cycles")


def test_no_unit_imports_another_units_privates():
    problems = private_violations(PACKAGE_DIR)
    assert not problems, report(problems, "imports of another unit's private names")


def test_the_reader_sees_the_package():
    """Guard against a reader that silently finds nothing."""
    imports = all_imports(PACKAGE_DIR)
    assert len(imports) > 50
    assert {unit_of(imp.module) for imp in imports} >= {"models", "saes", "stream", "train"}


# ---------------------------------------------------------------------------------------------
# each check can fail: a tiny fake package with planted faults

FAKE_ORDER = [("leaf", "_shared"), ("data",), ("models",), ("train",), ("cli", "report")]


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in {p.parent for p in root.rglob("*.py")} - {root}:
        (folder / "__init__.py").touch()
    return root


def test_clean_fake_package_passes(tmp_path):
    root = write_package(
        tmp_path,
        {
            "leaf.py": "import os\n",
            "_shared.py": "",
            "data/x.py": "from pkg.leaf import A\nfrom pkg import _shared\nfrom . import y\n",
            "data/y.py": "from ._z import helper\n",
            "data/_z.py": "",
            "models/m.py": "from ..data import x\nimport pkg.data.y\n",
            "train/t.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.train.u import U\n"
                "def f():\n    from pkg.train import u\n"
            ),
            "train/u.py": "from pkg.train.t import f\n",
            "cli.py": "from pkg.report import r\n",
            "report.py": "import pkg\n\ndef f():\n    from pkg import cli\n",
        },
    )
    assert layer_violations(root, FAKE_ORDER) == []
    assert import_cycles(root) == []
    assert private_violations(root, ("_shared",)) == []


def test_planted_upward_imports_are_reported(tmp_path):
    root = write_package(
        tmp_path,
        {
            "leaf.py": "from pkg._shared import s\n",  # leaves import nothing
            "_shared.py": "",
            "data/x.py": "from pkg.train import y\n",
            "data/deep.py": "import os\n\ndef f():\n    from ..models import m\n",
            "models/m.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.cli import C\n"
            ),
            "train/__init__.py": "y = 1\n",
            "cli.py": "",
            "report.py": "",
        },
    )
    assert layer_violations(root, FAKE_ORDER) == [
        "pkg/data/deep.py:4 imports pkg.models.m (unit models is right of unit data)",
        "pkg/data/x.py:1 imports pkg.train.y (unit train is right of unit data)",
        "pkg/leaf.py:1 imports pkg._shared.s (unit _shared is beside unit leaf, not left of it)",
        "pkg/models/m.py:3 imports pkg.cli.C (unit cli is right of unit models)",
    ]


def test_an_import_of_the_lazy_top_is_upward(tmp_path):
    root = write_package(tmp_path, {"data/x.py": "from pkg import version\n", "leaf.py": ""})
    assert layer_violations(root, FAKE_ORDER) == [
        "pkg/data/x.py:1 imports pkg.version (unit __init__ is right of unit data)"
    ]


def test_unknown_units_are_reported(tmp_path):
    root = write_package(
        tmp_path, {"browse.py": "", "data/x.py": "from pkg.ghost import g\n", "leaf.py": ""}
    )
    problems = layer_violations(root, FAKE_ORDER)
    assert len(problems) == 2
    assert problems[0].startswith("pkg.browse: unit 'browse' is not in the order; add it")
    assert problems[1] == (
        "pkg/data/x.py:1 imports pkg.ghost.g (unit ghost is not in the order; add it to the order)"
    )


def test_planted_cycle_is_reported(tmp_path):
    root = write_package(
        tmp_path,
        {
            "data/a.py": "import os\nfrom pkg.data.b import B\n",
            "data/b.py": "from .c import C\n",
            "data/c.py": "\n\nfrom pkg.data import a\n",
            "data/d.py": "from pkg.data.e import E\n",
            "data/e.py": "def f():\n    from pkg.data.d import D\n",  # not on import: no cycle
        },
    )
    assert import_cycles(root) == [
        "pkg/data/a.py:2 -> pkg/data/b.py:1 -> pkg/data/c.py:3 -> pkg/data/a.py  (3 files)"
    ]


def test_cycle_through_a_package_init_is_reported(tmp_path):
    root = write_package(
        tmp_path,
        {
            "stream/__init__.py": "from pkg.stream.cache import write\n",
            "stream/cache.py": "from pkg.stream import Source\n",
        },
    )
    assert import_cycles(root) == [
        "pkg/stream/__init__.py:1 -> pkg/stream/cache.py:1 -> pkg/stream/__init__.py  (2 files)"
    ]


def test_planted_private_imports_are_reported(tmp_path):
    root = write_package(
        tmp_path,
        {
            "_shared.py": "def _tool(): ...\n",
            "data/_z.py": "",
            "data/x.py": "def _helper(): ...\n",
            "models/m.py": (
                "from pkg.data.x import _helper\n"
                "import pkg.data._z\n"
                "from pkg.data import _z\n"
                "from ..data._z import public\n"
                "from pkg._shared import _tool\n"  # the shared leaf: allowed
                "from pkg.data.x import __doc__\n"  # dunder: not private
            ),
        },
    )
    assert private_violations(root, ("_shared",)) == [
        "pkg/models/m.py:1 imports pkg.data.x._helper (private to unit data)",
        "pkg/models/m.py:2 imports pkg.data._z (private to unit data)",
        "pkg/models/m.py:3 imports pkg.data._z (private to unit data)",
        "pkg/models/m.py:4 imports pkg.data._z.public (private to unit data)",
    ]


def test_docstring_order_is_parsed(tmp_path):
    init = tmp_path / "__init__.py"
    init.write_text(
        '"""Doc.\n\n    a, _b   leaves\n    → c         the c\n    → d, e   apps\n\nMore."""\n'
    )
    assert order_in_docstring(init) == [("a", "_b"), ("c",), ("d", "e")]


def test_relative_imports_resolve_against_the_files_package(tmp_path):
    root = write_package(
        tmp_path, {"data/__init__.py": "from ..train import t\n", "train/t.py": "", "leaf.py": ""}
    )
    assert layer_violations(root, FAKE_ORDER) == [
        "pkg/data/__init__.py:1 imports pkg.train.t (unit train is right of unit data)"
    ]
