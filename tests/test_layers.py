"""The engine's shape, checked statically with ``ast``: layers, no import cycles, short functions.

Every import counts, including imports inside functions and under ``TYPE_CHECKING``. The
layers, bottom to top: the base (``core``, errors, config, registry, events, device), then
data, models, runs, inference, training. A module imports only its own layer or lower; the
torch-free base modules never import torch; nothing in core imports a front end. See
docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"
LAYERS = ["base", "data", "models", "runs", "inference", "training"]
TORCH_FREE = {"core.errors", "core.config", "core.registry", "core.events"}
FRONT_ENDS = ("textual", "rich", "typer", "tui")
MAX_LINES = 80


def modules() -> dict[str, Path]:
    """Every core module by dotted name (a package is its __init__)."""
    out = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer(module: str) -> int:
    """The layer index of a core module."""
    part = module.split(".")[1] if module.count(".") >= 1 else "base"
    return LAYERS.index(part) if part in LAYERS else 0


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported name) for every import in the file, wherever it sits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            found.append((node.lineno, node.module))
    return found


def core_edges() -> dict[str, set[tuple[int, str]]]:
    """Each core module's imports of other core modules (resolved to the longest module name)."""
    mods = modules()
    edges: dict[str, set[tuple[int, str]]] = {m: set() for m in mods}
    for name, path in mods.items():
        for line, target in imports(path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add((line, target))
    return edges


def test_each_part_imports_only_its_own_layer_or_lower() -> None:
    bad = [
        f"{modules()[m].relative_to(CORE.parent)}:{line} imports {t}, a higher layer ({LAYERS[layer(t)]} above {LAYERS[layer(m)]})"
        for m, targets in core_edges().items() for line, t in sorted(targets) if layer(t) > layer(m)
    ]
    assert bad == []


def test_core_has_no_import_cycle() -> None:
    graph = {m: {t for _, t in targets} for m, targets in core_edges().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], " -> ".join(cycles[0]) if cycles else ""


def test_the_base_stays_torch_free_and_core_never_imports_a_front_end() -> None:
    bad = []
    for name, path in modules().items():
        for line, target in imports(path):
            top = target.split(".")[0]
            if top in FRONT_ENDS:
                bad.append(f"{path.relative_to(CORE.parent)}:{line} imports {target}")
            if name in TORCH_FREE and top == "torch":
                bad.append(f"{path.relative_to(CORE.parent)}:{line} imports torch in a torch-free module")
    assert bad == []


def test_no_function_in_core_is_over_80_lines() -> None:
    long = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_LINES:
                    long.append(f"{path.relative_to(CORE.parent)}:{node.lineno} {node.name} is {size} lines")
    assert long == []


def test_the_checks_see_a_violation(tmp_path: Path) -> None:
    # The resolver finds an upward import inside a function (the kind that hid the old cycles).
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from core.training.train import train\n")
    assert (2, "core.training.train.train") in imports(sample)
    assert layer("core.training.train") > layer("core.models.build")
