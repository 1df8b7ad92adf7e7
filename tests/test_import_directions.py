"""Data flows one way between the top-level folders, and no module imports itself back.

Every .py file's imports are read with `ast`, module-level and function-level alike (an
import hidden in a function is still a dependency, and still a cycle). The layers, from
the bottom:

    errors                 imports nothing of the project (every folder may raise UserError)
    progress               imports nothing of the project (progress bars for evaluation/,
                           training/ and the CLIs)
    configs                ml_collections files: only configs
    data                   errors, data
    networks               errors, networks
    style                  errors, data, networks, style: neural style transfer, a library
                           that training/, scoregen, the CLIs, bench/ and tests/ may use
                           (data: the photos that ship with scikit-image and sklearn)
    diffusion              errors, data, networks, diffusion
    gan, vae               errors, data, networks, diffusion, themselves
    evaluation             the above (never configs or training): metrics of samples,
                           arrays and feature networks; a model arrives as an argument
    training               all of the above but evaluation, which only `BRIDGE`
                           (training/eval_hook.py: the loop's evaluation hook and the
                           restore-and-sample half of evaluate.py) may import
    scoregen               the notebook API over training/ and evaluation/
    train.py, sample.py,   the CLIs: anything above; nothing imports them
    evaluate.py
    bench/, tests/         anything above (not the CLIs) and themselves; nothing else
                           imports them

A new top-level folder or module must be added to `ALLOWED`.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BELOW_TRAINING = {"errors", "progress", "configs", "data", "networks", "diffusion", "gan",
                  "vae", "style"}
CLIS = {"train", "sample", "evaluate", "stylize", "reflow"}
# importer's top-level name -> the top-level names it may import
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "progress": set(),
    "configs": {"configs"},
    "data": {"errors", "data"},
    "networks": {"errors", "networks"},
    "style": {"errors", "data", "networks", "style"},
    "diffusion": {"errors", "data", "networks", "diffusion"},
    "gan": {"errors", "data", "networks", "diffusion", "gan"},
    "vae": {"errors", "data", "networks", "diffusion", "vae"},
    "evaluation": {"errors", "progress", "data", "networks", "diffusion", "gan", "vae",
                   "evaluation"},
    "training": BELOW_TRAINING | {"training"},
    "scoregen": BELOW_TRAINING | {"evaluation", "training"},
    **{cli: BELOW_TRAINING | {"evaluation", "training", "scoregen"} for cli in CLIS},
    "bench": BELOW_TRAINING | {"evaluation", "training", "scoregen", "bench"},
    "tests": BELOW_TRAINING | {"evaluation", "training", "scoregen", "tests"},
}
# The one module of training/ that may import evaluation/.
BRIDGE = "training.eval_hook"
_SKIPPED_DIRS = {"build", "dist", "node_modules", "__pycache__"}


def project_files(root: Path = ROOT) -> dict[str, str]:
    """{relative posix path: source} of every .py file of the project."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p.startswith(".") or p in _SKIPPED_DIRS or p.endswith(".egg-info")
               for p in rel.parts[:-1]):
            continue
        files[rel.as_posix()] = path.read_text(encoding="utf-8")
    return files


def module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: str, source: str, known: set[str]) -> list[tuple[str, int]]:
    """(module, line) for each import in `source`, at any depth; `from pkg import name`
    counts as `pkg.name` where that is a module of `known`, else as `pkg`."""
    me = module_name(path)
    package = me if path.endswith("__init__.py") else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".") if package else []
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                found.append((full if full in known else base, node.lineno))
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def forbidden_imports(files: Mapping[str, str]) -> list[str]:
    """One line per import that goes against ALLOWED (and for files outside it)."""
    known = {module_name(p) for p in files}
    project = {_top(m) for m in known}
    problems = []
    for path, source in files.items():
        me = module_name(path)
        layer = _top(me)
        if layer not in ALLOWED:
            problems.append(f"{path}: top-level {layer!r} is not in ALLOWED "
                            "(tests/test_import_directions.py): give it a layer")
            continue
        for target, line in imported_modules(path, source, known):
            other = _top(target)
            if other not in project or other == layer:
                continue
            if other in ALLOWED[layer]:
                continue
            if layer == "training" and other == "evaluation" and me == BRIDGE:
                continue
            problems.append(f"{path}:{line}: {layer} may not import {target}")
    return problems


def import_cycles(files: Mapping[str, str]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module that
    imports itself) of the import graph (Tarjan)."""
    known = {module_name(p) for p in files}
    graph = {module_name(p): sorted({t for t, _ in imported_modules(p, s, known)
                                     if t in known}) for p, s in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(start: str) -> None:
        # Iterative, so a deep graph cannot hit the recursion limit.
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


# The checker itself, on made-up sources.

def test_the_checker_sees_a_function_level_import_against_the_direction():
    files = {"data/__init__.py": "", "training/__init__.py": "", "training/loop.py": "",
             "data/pipeline.py": "import numpy\n\ndef f():\n    from training import loop\n"}
    assert forbidden_imports(files) == ["data/pipeline.py:4: data may not import training.loop"]


def test_the_checker_allows_evaluation_only_from_the_bridge():
    files = {"evaluation/__init__.py": "", "evaluation/runner.py": "",
             "training/__init__.py": "", "training/eval_hook.py": "",
             "training/loop.py": "from evaluation import runner\n"}
    assert forbidden_imports(files) == [
        "training/loop.py:1: training may not import evaluation.runner"]
    files["training/loop.py"] = "from training import eval_hook\n"
    files["training/eval_hook.py"] = "from evaluation.runner import evaluate\n"
    assert forbidden_imports(files) == []


def test_the_checker_refuses_imports_of_the_clis_and_unknown_folders():
    files = {"evaluate.py": "", "training/__init__.py": "import evaluate\n",
             "paint/__init__.py": ""}
    assert sorted(forbidden_imports(files)) == [
        "paint/__init__.py: top-level 'paint' is not in ALLOWED "
        "(tests/test_import_directions.py): give it a layer",
        "training/__init__.py:1: training may not import evaluate"]


def test_the_checker_finds_a_cycle_hidden_in_a_function_and_relative_imports():
    files = {"training/__init__.py": "",
             "training/a.py": "def f():\n    from training import b\n",
             "training/b.py": "from .c import x\n",
             "training/c.py": "import training.a\n",
             "training/d.py": "from training import a\n"}
    assert import_cycles(files) == [["training.a", "training.b", "training.c"]]
    files["training/c.py"] = "x = 1\n"
    assert import_cycles(files) == []


# The project.

def test_imports_follow_the_layers():
    problems = forbidden_imports(project_files())
    assert not problems, "imports against the one-way flow:\n" + "\n".join(problems)


def test_no_module_imports_itself_back():
    cycles = import_cycles(project_files())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)
