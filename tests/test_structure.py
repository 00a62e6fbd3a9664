"""The engine's shape, read from its source with ``ast`` (nothing in core is imported): no import
cycle, the layer order of STYLE.md, a torch-free base, no front-end imports, short functions.

Every import counts, including those inside functions and under ``if TYPE_CHECKING:``: a lazy
import still ties two modules together, it only hides the knot. ``from core.x import name``
is an import of ``core.x.name`` when that is a module, else of ``core.x``; importing a
package means importing its ``__init__``. Layers, bottom to top: the base (``core`` itself,
errors, config, registry, events, device), then data, models, runs, inference, training. A
module may import modules of its own layer or lower ones only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "core"

BASE = frozenset({"core", "core.errors", "core.config", "core.registry", "core.events", "core.device"})
LAYERS = ("base", "data", "models", "runs", "inference", "training")
"""Bottom to top; a part below never imports a part above."""

TORCH_FREE = ("core.errors", "core.config", "core.registry", "core.events")
"""Base modules that front ends import for names and messages: they must not cost torch's import."""

FRONT_ENDS = ("textual", "rich", "typer", "tui")
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it stands, and the module that holds it."""

    source: str
    path: str  # relative to the repository root, e.g. core/models/hf.py
    line: int
    target: str  # a core module name, or an outside module's full dotted name

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_name(path: Path) -> str:
    """``core/models/hf.py`` -> ``core.models.hf``; ``core/data/__init__.py`` -> ``core.data``."""
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_files() -> dict[str, Path]:
    """Every module of core, by dotted name."""
    return {module_name(p): p for p in sorted(CORE.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = core_files()


def _absolute(module: str | None, level: int, source: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names, relative imports resolved against ``source``."""
    if not level:
        return module or ""
    package = source.split(".") if is_package else source.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_in(source_text: str, name: str, rel: str, is_package: bool) -> Iterator[Import]:
    """Every import in a module's source, at any depth, with its target resolved as the docstring says."""
    for node in ast.walk(ast.parse(source_text, filename=rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, name, is_package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield Import(name, rel, node.lineno, submodule if submodule in MODULES else base)


def imports_of(name: str, path: Path) -> Iterator[Import]:
    """``imports_in`` for one file of core."""
    return imports_in(path.read_text(), name, str(path.relative_to(CORE.parent)), path.name == "__init__.py")


ALL_IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path)]


def core_edges() -> dict[str, list[Import]]:
    """The import graph among core modules: module -> its imports of other core modules."""
    graph: dict[str, list[Import]] = {name: [] for name in MODULES}
    for imp in ALL_IMPORTS:
        if imp.target in MODULES and imp.target != imp.source:
            graph[imp.source].append(imp)
    return graph


def layer_of(module: str) -> str | None:
    """The layer a core module belongs to, None for a module in no layer."""
    if module in BASE:
        return "base"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS[1:]:
        return parts[1]
    return None


def layer_violations(graph: dict[str, list[Import]]) -> list[str]:
    """One line per import of a module from a higher layer than its own."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    wrong = []
    for imps in graph.values():
        for imp in imps:
            src, dst = layer_of(imp.source), layer_of(imp.target)
            if src is not None and dst is not None and rank[dst] > rank[src]:
                wrong.append(f"{imp.where()} imports {imp.target}, a higher layer ({dst} above {src})")
    return wrong


def strongly_connected(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in {imp.target for imp in graph[v]}:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_cycle(graph: dict[str, list[Import]], component: list[str]) -> list[Import]:
    """A shortest import chain from the component's first module back to itself, inside the component."""
    start, members = component[0], set(component)
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for imp in graph[v]:
            if imp.target == start:
                return [*paths[v], imp]
            if imp.target in members and imp.target not in paths:
                paths[imp.target] = [*paths[v], imp]
                queue.append(imp.target)
    raise AssertionError(f"{component} is not a cycle")  # pragma: no cover - Tarjan said it was


def describe_cycle(chain: list[Import]) -> str:
    steps = [f"{imp.source} -> {imp.target} ({imp.where()})" for imp in chain]
    return "import cycle: " + "; ".join(steps)


def test_the_reader_finds_every_kind_of_import() -> None:
    # The checks below are only as good as this: lazy, TYPE_CHECKING, relative and
    # from-package imports must all be seen, or a cycle through one goes unnoticed.
    source = (
        "from typing import TYPE_CHECKING\n"
        "import core.errors\n"
        "from core.data import loaders, layout as lay\n"
        "from core.config import RunConfig\n"
        "from . import hub\n"
        "from .build import build_model\n"
        "from .. import events\n"
        "if TYPE_CHECKING:\n"
        "    from core.runs.store import RunInfo\n"
        "def f() -> None:\n"
        "    import torch.nn\n"
        "    from core import training\n"
    )
    found = [(imp.line, imp.target) for imp in imports_in(source, "core.models.probe", "core/models/probe.py", False)]
    assert sorted(found) == sorted([
        (1, "typing"), (2, "core.errors"), (3, "core.data.loaders"), (3, "core.data.layout"), (4, "core.config"),
        (5, "core.models.hub"), (6, "core.models.build"), (7, "core.events"), (9, "core.runs.store"),
        (11, "torch.nn"), (12, "core.training"),
    ])  # fmt: skip


def test_relative_imports_in_a_package_init_resolve_inside_the_package() -> None:
    source = "from .loaders import make_loader\nfrom .. import errors\nfrom . import layout\n"
    found = [imp.target for imp in imports_in(source, "core.data", "core/data/__init__.py", True)]
    assert found == ["core.data.loaders", "core.errors", "core.data.layout"]


def test_every_core_module_sits_in_a_layer() -> None:
    lost = sorted(m for m in MODULES if layer_of(m) is None)
    assert not lost, (
        f"{', '.join(lost)}: in no layer; put the module in one of core/{{data,models,runs,inference,training}}/ "
        "or add it to the base in tests/test_structure.py (and STYLE.md)"
    )


def test_no_import_cycle_among_core_modules() -> None:
    graph = core_edges()
    cycles = [describe_cycle(one_cycle(graph, c)) for c in strongly_connected(graph)]
    assert not cycles, "\n".join(cycles)


def test_each_part_imports_only_its_own_layer_or_lower() -> None:
    wrong = layer_violations(core_edges())
    assert not wrong, "\n".join(wrong)


def test_the_base_modules_that_must_stay_light_never_import_torch() -> None:
    # Directly or through another core module: either way `import core.config` would load torch.
    graph = core_edges()
    wrong = []
    for module in TORCH_FREE:
        seen, chain = {module}, [(module, [])]
        while chain:
            current, via = chain.pop()
            for imp in ALL_IMPORTS:
                if imp.source != current:
                    continue
                if imp.target == "torch" or imp.target.startswith("torch."):
                    route = " -> ".join([*via, current]) if via else current
                    wrong.append(f"{imp.where()} imports {imp.target}; {module} must stay torch-free (via {route})")
            for imp in graph[current]:
                if imp.target not in seen:
                    seen.add(imp.target)
                    chain.append((imp.target, [*via, current]))
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_core_never_imports_a_front_end() -> None:
    wrong = [
        f"{imp.where()} imports {imp.target}; core never imports {', '.join(FRONT_ENDS)}"
        for imp in ALL_IMPORTS
        if imp.target.split(".")[0] in FRONT_ENDS
    ]
    assert not wrong, "\n".join(wrong)


def long_functions() -> list[str]:
    """Every function or method in core longer than MAX_FUNCTION_LINES, def line to last line."""
    found = []
    for path in MODULES.values():
        rel = path.relative_to(CORE.parent)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{rel}:{node.lineno} {node.name} is {lines} lines (limit {MAX_FUNCTION_LINES})")
    return found


def test_no_function_in_core_is_longer_than_the_limit() -> None:
    too_long = long_functions()
    assert not too_long, "\n".join(too_long)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("cycle", ["import cycle: core.a -> core.b (core/a.py:1); core.b -> core.a (core/b.py:3)"]),
        ("layer", ["core/models/hf.py:12 imports core.inference.classifier, a higher layer (inference above models)"]),
    ],
)
def test_the_checks_go_red_on_a_planted_fault(case: str, expected: list[str]) -> None:
    # The graph checks run on a planted graph: each must report the fault, in words a reader can act on.
    if case == "cycle":
        graph = {
            "core.a": [Import("core.a", "core/a.py", 1, "core.b")],
            "core.b": [Import("core.b", "core/b.py", 3, "core.a")],
            "core.c": [Import("core.c", "core/c.py", 2, "core.a")],
        }
        assert [describe_cycle(one_cycle(graph, c)) for c in strongly_connected(graph)] == expected
    else:
        graph = {
            "core.models.hf": [Import("core.models.hf", "core/models/hf.py", 12, "core.inference.classifier")],
            "core.inference.classifier": [Import("core.inference.classifier", "core/inference/classifier.py", 5, "core.models.hf")],
            "core.data.images": [Import("core.data.images", "core/data/images.py", 7, "core.errors")],
        }
        assert layer_violations(graph) == expected
