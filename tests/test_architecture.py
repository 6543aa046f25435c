"""The house rules of docs/architecture.md, checked: no import cycle (function-level imports included), every
module imports on its own, and the run folder's file names spelled in one module."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tiny_transformers"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            candidates = submodules or [base]  # `from . import hub` needs hub, not the package's __init__
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


def test_the_import_graph_has_no_cycle():
    # The top-level __init__ is the lazy facade (``from tiny_transformers import finetune``): it imports train and
    # cli on attribute access, and nothing inside the package imports it back.
    graph = {name: imported_modules(name, path) for name, path in MODULES.items() if name != "tiny_transformers"}
    assert not any("tiny_transformers" in targets for targets in graph.values())
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycle = trail[trail.index(target) :] + [target] if target in trail else [node, target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_hub_io_depends_on_nothing_that_publishes():
    """models, data and card ask hub.py for downloads and ids; hub.py must not need them back."""
    assert imported_modules("tiny_transformers.hub", MODULES["tiny_transformers.hub"]) <= {
        "tiny_transformers.errors",
        "tiny_transformers.config",
    }


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    """Each module in a fresh set of package modules (torch and friends stay loaded, so this takes seconds)."""
    script = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "tiny_transformers" or m.startswith("tiny_transformers.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f"{name}: {type(error).__name__}: {error}")
print("\\n".join(failed))
"""
    done = subprocess.run([sys.executable, "-c", script, *MODULES], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def test_the_run_folders_file_names_are_spelled_only_in_rundir():
    owners = {"tiny_transformers.rundir"}
    names = (
        '"labels.json"',
        '"metrics.jsonl"',
        '"checkpoints"',
        '"results.md"',
        '"training_curves.png"',
        '".hub-push"',
    )
    spelled = {
        name: [n for n in names if n in path.read_text()]
        for name, path in MODULES.items()
        if name not in owners and any(n in path.read_text() for n in names)
    }
    assert spelled == {}


def documented_graph() -> dict[str, set[str]]:
    """The import graph drawn in docs/architecture.md's first code block: ``name -> a, b, and lazily c``, a
    continuation line indented, and ``a, b   (leaves...)`` for modules that import none of the package."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    block = text.split("```")[1]
    graph: dict[str, set[str]] = {}
    last = None
    for line in block.splitlines():
        if not line.strip():
            continue
        if "->" in line:
            name, _, targets = line.partition("->")
            last = name.strip().rstrip("/")
            graph[last] = set()
        elif line.startswith(" ") and last is not None:
            targets = line
        else:  # a line of leaves
            for leaf in line.split("(")[0].split(","):
                graph[leaf.strip()] = set()
            last = None
            continue
        targets = targets.split("(")[0].replace("and lazily", ",")
        graph[last] |= {t.strip() for t in targets.split(",") if t.strip()}
    return graph


def test_the_documented_import_graph_is_the_real_one():
    """Every module is on the map, which draws exactly what it imports (data.* counts as data/)."""
    documented = documented_graph()

    def short(name: str) -> str:
        return name.removeprefix("tiny_transformers.").split(".")[0]

    drawn: dict[str, set[str]] = {name: set() for name in documented}  # what each module really imports
    for name, path in MODULES.items():
        if name == "tiny_transformers":
            continue
        assert short(name) in documented, f"{name} is missing from docs/architecture.md's import graph"
        real = {short(target) for target in imported_modules(name, path)} - {short(name)}
        assert real <= documented[short(name)], f"{short(name)} imports {sorted(real - documented[short(name)])}"
        drawn[short(name)] |= real
    stale = {name: sorted(documented[name] - imports) for name, imports in drawn.items() if documented[name] - imports}
    assert stale == {}, f"docs/architecture.md draws imports that no longer exist: {stale}"
