"""The shape of the package (docs/architecture.md): layers import one way, no import cycles,
no module asks which workflow it runs outside tasks/, modules stay small."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

from biapipe.tasks import REGISTRY

PACKAGE = REPO / "src" / "biapipe"

#: Layers, lowest first: a module may import its own package and the layers below it.
LAYERS = {"core": 0, "data": 1, "models": 2, "training": 3, "inference": 3, "large": 4, "tasks": 5,
          "workflow": 6, "cli": 7, "api": 7}

#: Largest module, in lines.
MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """biapipe modules an import statement of ``module`` reads (a package import names its __init__)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        base = package.split(".")
        if node.level:
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return [name for name in names if name in MODULES and name not in ancestors]


@cache
def imports(module: str) -> tuple[frozenset[str], frozenset[str], bool]:
    """(biapipe modules imported at top level, those imported inside functions, imports torch at top level).

    Imports under ``if TYPE_CHECKING:`` are for type hints only and are not counted."""
    tree = ast.parse(MODULES[module].read_text())
    top: set[str] = set()
    local: set[str] = set()
    torch = False

    def visit(node: ast.AST, in_function: bool) -> None:
        nonlocal torch
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                (local if in_function else top).update(_resolve(module, child))
                if not in_function and _imports_torch(child):
                    torch = True
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    top.discard(module)
    return frozenset(top), frozenset(local), torch


def _imports_torch(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "torch" for a in node.names)
    return (node.module or "").split(".")[0] == "torch" and node.level == 0


def loads_torch(module: str) -> bool:
    """Whether importing ``module`` imports torch (directly, through its packages' __init__,
    or through the biapipe modules it imports at top level)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        top, _, torch = imports(m)
        if torch:
            return True
        parents = [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]
        todo += [t for t in [*top, *parents] if t in MODULES]
    return False


def test_layers_import_one_way() -> None:
    bad = []
    for module in MODULES:
        here = layer(module)
        if here == "root":
            continue
        top, local, _ = imports(module)
        for target in top | local:
            there = layer(target)
            if there in ("root", here):
                continue
            if LAYERS[there] >= LAYERS[here]:
                bad.append(f"{module} imports {target} ({here} -> {there})")
    assert not bad, "imports against the layer order core -> data -> models -> training/inference -> large -> " \
                    "tasks -> workflow:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = {m: sorted(imports(m)[0] | imports(m)[1]) for m in MODULES}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_function_local_imports_only_defer_torch() -> None:
    """A biapipe import inside a function is there to keep torch out of parsing, nothing else."""
    bad = [f"{m} imports {t} inside a function, and {t} does not load torch"
           for m in MODULES for t in sorted(imports(m)[1]) if not loads_torch(t)]
    assert not bad, "\n".join(bad)


def test_parsing_the_workflow_does_not_import_torch() -> None:
    for module in ("biapipe.workflow.smk", "biapipe.workflow.stages", "biapipe.workflow.slurm", "biapipe.cli"):
        assert not loads_torch(module), module
    for name, entry in REGISTRY.items():
        assert not loads_torch(f"biapipe.tasks.{entry.split(':')[0]}"), name


def _workflow_branches(tree: ast.AST) -> list[int]:
    names = set(REGISTRY)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and re.search(r"workflow|task|\.name\b", ast.unparse(node)):
            values = [node.left, *node.comparators]
            consts = [v for v in values if isinstance(v, ast.Constant) and v.value in names]
            consts += [e for v in values if isinstance(v, ast.Tuple | ast.List | ast.Set) for e in v.elts
                       if isinstance(e, ast.Constant) and e.value in names]
            if consts:
                lines.append(node.lineno)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
            if re.search(r"\b\w+Task\b", ast.unparse(node.args[1])):
                lines.append(node.lineno)
    return lines


def test_no_workflow_name_branches_outside_tasks() -> None:
    bad = []
    for module, path in MODULES.items():
        if layer(module) == "tasks":
            continue
        bad += [f"{path.relative_to(REPO)}:{line}" for line in _workflow_branches(ast.parse(path.read_text()))]
    names = "|".join(REGISTRY)
    branch = re.compile(rf"""(==|!=|\bin\b)\s*[\(\[]?\s*["']({names})["']|["']({names})["']\s*(==|!=)|\["workflow"\]\s*(==|!=|in)""")
    for smk in sorted((REPO / "workflow").rglob("*.smk")) + [REPO / "workflow" / "Snakefile"]:
        for no, line in enumerate(smk.read_text().splitlines(), start=1):
            if branch.search(line):
                bad.append(f"{smk.relative_to(REPO)}:{no}")
    assert not bad, "branches on a workflow name outside tasks/ (make it a Task method or attribute):\n" + \
                    "\n".join(bad)


def test_the_branch_detector_finds_branches() -> None:
    """The check above means something: it flags the shapes a workflow branch takes."""
    tree = ast.parse("if task.name == 'instance': pass\nif cfg['workflow'] in ('semantic', 'x'): pass\n"
                     "if isinstance(task, InstanceTask): pass\nif task.name == 'other': pass\n"
                     "if norm == 'instance': pass\n")
    assert _workflow_branches(tree) == [1, 2, 3]


def test_the_library_never_imports_snakemake() -> None:
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] == "snakemake" for n in names), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by what its parts do"


def test_every_registered_workflow_is_a_folder_with_a_task() -> None:
    for name, entry in REGISTRY.items():
        folder = PACKAGE / "tasks" / entry.split(".")[0]
        assert (folder / "task.py").is_file(), name
