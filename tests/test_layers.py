"""The package's import contract, checked on the source text (ast; nothing is imported).

Layers (docs/layers.md gives the reasons), each importing only from its own layer or lower ones:

    0 core        profile schema, artifacts and manifests, artifact paths and variant names, text
                  helpers, Drive paths, the published numbers, portable paths: __init__, config,
                  artifacts, layout, text, drive, refs, published, portable, mergekit_yaml (mergekit
                  configs in a profile), training_options (finetune.sft / finetune.lora checked)
    1 components  data sources, benchmarks, models, embeddings, plots, statistics, lm-eval output,
                  hub access, the leak judge, the demo data, model cards
    2 stages      curate, decontaminate, finetune, merge, evaluate, analysis (a package named after a
                  stage, e.g. merge/, is that stage, all its modules)
    3 entry       runner, cli, plan, preflight, notebook (the notebooks' side of the runner), colab
                  (the notebooks' setup cell), __main__

Rules: every module has a layer; no module imports a higher layer; no stage imports another stage;
no import cycles; no function longer than MAX_FUNCTION_LINES. Imports count wherever they are: at
module top, inside a function, under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "platypus_utils"
MAX_FUNCTION_LINES = 80

CORE, COMPONENTS, STAGES, ENTRY = 0, 1, 2, 3
LAYER_NAMES = {CORE: "core", COMPONENTS: "components", STAGES: "stages", ENTRY: "entry"}
STAGE_NAMES = ("curate", "decontaminate", "finetune", "merge", "evaluate", "analysis")
LAYERS = {
    **dict.fromkeys(
        [
            "__init__",
            "config",
            "artifacts",
            "layout",
            "text",
            "drive",
            "refs",
            "published",
            "portable",
            "mergekit_yaml",
            "training_options",
        ],
        CORE,
    ),
    **dict.fromkeys(
        [
            "sources",
            "cards",
            "benchmarks",
            "demo_data",
            "models",
            "embeddings",
            "openvino_encoder",
            "plotting",
            "stats",
            "lmeval_io",
            "hub",
            "leak_judge",
            "lm_eval_tasks",
            "export",
        ],
        COMPONENTS,
    ),
    **dict.fromkeys(STAGE_NAMES, STAGES),
    **dict.fromkeys(["runner", "cli", "plan", "preflight", "notebook", "colab", "__main__"], ENTRY),
}


@dataclass
class Module:
    name: str  # dotted, relative to the package: "config", "merge.io"; the package itself is "__init__"
    path: Path
    tree: ast.Module
    imports: list[tuple[str, int]] = field(default_factory=list)  # (imported name, line)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imported_names(tree: ast.Module, name: str, is_package: bool) -> list[tuple[str, int]]:
    """Every platypus_utils name a module imports, as dotted names relative to the package."""
    here = [] if name == "__init__" else name.split(".")
    anchor_base = here if is_package else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = anchor_base[: len(anchor_base) - (node.level - 1)]
                base = anchor + (node.module.split(".") if node.module else [])
            elif node.module and (node.module + ".").startswith("platypus_utils."):
                base = node.module.split(".")[1:]
            else:
                continue
            found += [(".".join(base + [alias.name]), node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (alias.name.split(".", 1)[1], node.lineno)
                for alias in node.names
                if alias.name.startswith("platypus_utils.")
            ]
    return found


def _load_modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        modules[name] = Module(name, path, tree)
        modules[name].imports = _imported_names(tree, name, path.name == "__init__.py")
    return modules


MODULES = _load_modules()


def _resolve(dotted: str) -> str:
    """The module a dotted name lives in: the longest prefix that is a module, else the package."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or "__init__"


def _edges() -> dict[str, dict[str, int]]:
    """module -> {module it imports: first line}; a module importing itself (a package its own
    attribute) is left out."""
    edges: dict[str, dict[str, int]] = {}
    for mod in MODULES.values():
        targets = edges.setdefault(mod.name, {})
        for dotted, line in mod.imports:
            target = _resolve(dotted)
            if target != mod.name:
                targets.setdefault(target, line)
    return edges


EDGES = _edges()


def layer_of(name: str) -> int | None:
    return LAYERS.get(name.split(".")[0])


def stage_of(name: str) -> str | None:
    head = name.split(".")[0]
    return head if head in STAGE_NAMES else None


def _where(mod: str, line: int) -> str:
    return f"{MODULES[mod].path.relative_to(ROOT)}:{line}"


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _long_functions(max_lines: int = MAX_FUNCTION_LINES) -> list[tuple[int, str]]:
    found = []
    for mod in MODULES.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > max_lines:
                    found.append((n, f"{_where(mod.name, node.lineno)} {node.name} ({n} lines)"))
    return sorted(found, reverse=True)


# ---------------------------------------------------------------- the checks themselves can fail
def test_the_checker_sees_imports_of_every_form():
    source = (
        "import os\nfrom . import layout\nfrom .config import Profile\nimport platypus_utils.models\n"
        "def f():\n    from ..merge import io\n    from platypus_utils.curate import x\n"
        "if TYPE_CHECKING:\n    from .stats import t\n"
    )
    names = [n for n, _ in _imported_names(ast.parse(source), "analysis.frames", is_package=False)]
    assert names == ["analysis.layout", "analysis.config.Profile", "models", "merge.io", "curate.x", "analysis.stats.t"]
    names = [
        n
        for n, _ in _imported_names(
            ast.parse("from . import __version__\nfrom .io import f\n"), "merge", is_package=True
        )
    ]
    assert names == ["merge.__version__", "merge.io.f"]


def test_the_checker_finds_cycles_and_long_functions():
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []
    assert [n for n, _ in _long_functions(max_lines=1)] and _resolve("config.Profile") == "config"
    assert _resolve("__version__") == "__init__" and len(MODULES) > 20


# ---------------------------------------------------------------- the contract
def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, (
        f"modules with no layer: {', '.join(unplaced)}; add them to LAYERS in "
        "tests/test_layers.py and to docs/layers.md"
    )


def test_no_module_imports_a_higher_layer():
    upward = []
    for mod, targets in EDGES.items():
        for target, line in targets.items():
            lo, hi = layer_of(mod), layer_of(target)
            if lo is not None and hi is not None and hi > lo:
                upward.append(f"{_where(mod, line)}: {mod} ({LAYER_NAMES[lo]}) imports {target} ({LAYER_NAMES[hi]})")
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_no_stage_imports_another_stage():
    cross = [
        f"{_where(mod, line)}: {mod} imports {target}"
        for mod, targets in EDGES.items()
        for target, line in targets.items()
        if stage_of(mod) and stage_of(target) and stage_of(mod) != stage_of(target)
    ]
    assert not cross, "stage-to-stage imports (stages meet through files named by layout):\n" + "\n".join(sorted(cross))


def test_no_import_cycles():
    cycles = _cycles(EDGES)
    described = []
    for cycle in cycles:
        links = [f"{_where(m, line)}: {m} -> {t}" for m in cycle for t, line in EDGES[m].items() if t in cycle]
        described.append(" <-> ".join(cycle) + "\n    " + "\n    ".join(links))
    assert not cycles, "import cycles:\n" + "\n".join(described)


@pytest.mark.parametrize("max_lines", [MAX_FUNCTION_LINES])
def test_functions_are_short(max_lines):
    long = _long_functions(max_lines)
    assert not long, f"functions over {max_lines} lines:\n" + "\n".join(where for _, where in long)
