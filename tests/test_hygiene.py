"""Import hygiene, checked in fresh interpreters: the engine never pulls in a front end, and
the CLI's help never pulls in torch.

``core`` must stay usable without textual, rich, typer or tui (STYLE.md: the engine/UI
boundary), and ``tlwork --help`` must answer without paying for torch's import.
"""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import core

FRONT_ENDS = ("textual", "rich", "typer", "tui")
REPO_ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )


def core_modules() -> list[str]:
    """Every module of the core package, found on disk so new modules are covered too."""
    return sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core."))


PROBE = """
import importlib, json, sys
watched = {watched!r}
def loaded():
    return sorted({{name.split(".")[0] for name in sys.modules}} & set(watched))
report = {{}}
for module in ["core", *sys.argv[1:]]:
    importlib.import_module(module)
    report[module] = loaded()
print(json.dumps(report))
"""


def test_importing_core_and_each_module_leaves_the_front_ends_out() -> None:
    modules = core_modules()
    assert {"core.config", "core.training.train", "core.inference.evaluate", "core.models.build"} <= set(modules)
    result = python(PROBE.format(watched=FRONT_ENDS), *modules)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # The first module that pulled one in is the culprit.
    assert {m: found for m, found in report.items() if found} == {}
    assert list(report) == ["core", *modules]


def test_the_light_core_modules_do_not_import_torch() -> None:
    # The CLI's option parsing, `tlwork runs` and the TUI's first screen rely on these.
    light = ["core.errors", "core.config", "core.registry", "core.events", "core.runs.store", "core.runs.lock"]
    result = python(PROBE.format(watched=("torch",)), *light)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {m: [] for m in ["core", *light]}


def test_importing_the_cli_does_not_import_torch() -> None:
    result = python("import sys, tui.cli; print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_help_does_not_import_torch() -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torch imported' if 'torch' in sys.modules else 'no torch'))\n"
        "from tui.cli import main\n"
        "sys.argv = ['tlwork', *sys.argv[1:]]\n"
        "main()\n"
    )
    for args in (["--help"], ["run", "--help"], ["eval", "--help"]):
        result = python(code, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip().endswith("no torch"), args


def test_the_tlwork_console_script_answers_help() -> None:
    script = Path(sys.executable).parent / "tlwork"
    command = str(script) if script.exists() else shutil.which("tlwork")
    assert command, "the tlwork console script is not installed; run `pip install -e .`"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("run", "eval", "runs", "backbones"):
        assert name in result.stdout
