"""dvc.yaml declares exactly what each stage uses, so `dvc status` cannot miss a change.

Params: the config keys the stage's task read, as the runner records them under ``FGQ_TRACE_DIR``.
Code: the package modules the stage script imports, followed transitively (function-level imports
too; type-checking-only and lazy ``__getattr__`` imports not), plus the modules named by the
``_target_`` keys it read. The
runner layer is left out: every stage goes through it and it computes nothing a stage writes.
"""

from __future__ import annotations

import ast
import copy
import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from conftest import ON_SMOKE_PROJECT, REPO

from fgq_pipeline.dvc_stages import declared_params

PACKAGE = "fgq_pipeline"
SOURCE = REPO / "src"
RUNNER_LAYER = {f"{PACKAGE}.{name}" for name in ("runner", "params", "validation", "dvc_stages", "config_reads", "tracking")}
UNTRACKED_PARAM_GROUPS = ("paths.", "mlflow.")  # paths are the stages' deps and outs; mlflow is where runs are logged


def module_file(module: str) -> Path | None:
    """The source file of a package module, or None for anything outside the package."""
    if module != PACKAGE and not module.startswith(f"{PACKAGE}."):
        return None
    base = SOURCE.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_not_run_on_import(node: ast.AST) -> bool:
    """Type-checking-only imports, and a module's lazy ``__getattr__`` (PEP 562), which imports on first use."""
    if isinstance(node, ast.FunctionDef):
        return node.name == "__getattr__"
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, own_module: str) -> set[str]:
    """Modules ``path`` imports (as absolute names; ``from m import x`` yields m and m.x)."""
    package = own_module if path.name == "__init__.py" else own_module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_not_run_on_import(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_files(script: Path, extra_modules: Iterable[str] = ()) -> set[Path]:
    """Package files that running ``script`` imports, and those of ``extra_modules``."""
    seen: set[str] = set()
    pending = [m for name in (*_imports(script, "__main__"), *extra_modules) for m in _with_parents(name)]
    files: set[Path] = set()
    while pending:
        module = pending.pop()
        if module in seen or module in RUNNER_LAYER:
            continue
        seen.add(module)
        path = module_file(module)
        if path is None:
            continue
        files.add(path)
        pending.extend(m for name in _imports(path, module) for m in _with_parents(name))
    return files


def target_modules(params: dict, keys: Iterable[str]) -> set[str]:
    """Modules named by the ``_target_`` values among ``keys`` (Hydra instantiates them by name)."""
    modules = set()
    for key in keys:
        if key.endswith("._target_"):
            value = params
            for part in key.split("."):
                value = value[part]
            modules.add(value.rpartition(".")[0])
    return modules


def _covered(item: str, declared: Iterable[str], separator: str) -> bool:
    return any(item == d or item.startswith(d.rstrip(separator) + separator) for d in declared)


def undeclared_params(read: Iterable[str], declared: Iterable[str]) -> list[str]:
    declared = list(declared)
    return sorted(k for k in read if not k.startswith(UNTRACKED_PARAM_GROUPS) and not _covered(k, declared, "."))


def unread_params(read: Iterable[str], declared: Iterable[str]) -> list[str]:
    read = list(read)
    return sorted(d for d in declared if not any(_covered(k, [d], ".") for k in read))


def undeclared_code(files: Iterable[Path], deps: Iterable[str]) -> list[str]:
    deps = list(deps)
    return sorted(str(f.relative_to(REPO)) for f in files if not _covered(str(f.relative_to(REPO)), deps, "/"))


def unused_code_deps(files: Iterable[Path], deps: Iterable[str]) -> list[str]:
    """Declared ``src/`` deps that hold no file the stage imports."""
    names = [str(f.relative_to(REPO)) for f in files]
    return sorted(d for d in deps if d.startswith("src/") and not any(_covered(n, [d], "/") for n in names))


def mismatches(stages: dict, trace_dir: Path, params: dict) -> list[str]:
    """Every disagreement between ``stages`` (dvc.yaml's) and what the stages read and import."""
    problems = []
    for name, stage in stages.items():
        reads = json.loads((trace_dir / f"{name}.json").read_text())
        declared, deps = declared_params(stage), stage.get("deps", [])
        script = REPO / "stages" / f"{name}.py"
        files = {script, *imported_files(script, target_modules(params, reads))}
        problems += [f"{name} reads param {k}, undeclared" for k in undeclared_params(reads, declared)]
        problems += [f"{name} declares param {k}, never read" for k in unread_params(reads, declared)]
        problems += [f"{name} imports {f}, undeclared" for f in undeclared_code(files, deps)]
        problems += [f"{name} depends on {d}, imports nothing from it" for d in unused_code_deps(files, deps)]
    return problems


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.slow
@ON_SMOKE_PROJECT
def test_dvc_yaml_declares_exactly_the_params_and_code_each_stage_uses(smoke_project):
    root, _ = smoke_project
    assert mismatches(dvc_yaml(), root / "trace", yaml.safe_load((root / "params.yaml").read_text())) == []


@pytest.mark.slow
@ON_SMOKE_PROJECT
@pytest.mark.parametrize(("stage", "kind", "entry"), [
    ("ptq", "params", "seed"),
    ("evaluate", "params", "quant.group_size"),
    ("finetune", "params", "baseline.budget_images"),
    ("baseline", "params", "data"),
    ("evaluate", "deps", "src/fgq_pipeline/quant"),
    ("ptq", "deps", "src/fgq_pipeline/tasks/ptq_grid.py"),
    ("bench", "deps", "src/fgq_pipeline/kernels"),
    ("export", "params", "export.scale_dtypes"),
])
def test_a_dvc_yaml_without_a_param_or_code_dep_fails_the_check(smoke_project, stage, kind, entry):
    root, _ = smoke_project
    stages = copy.deepcopy(dvc_yaml())
    stages[stage][kind].remove(entry)
    problems = mismatches(stages, root / "trace", yaml.safe_load((root / "params.yaml").read_text()))
    assert problems and all(p.startswith(f"{stage} ") and "undeclared" in p for p in problems), problems
