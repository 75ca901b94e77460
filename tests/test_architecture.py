"""The layout rules of the architecture (see the style guide, "Which way imports point"):

- backends (``llm/``) know nothing of methods or the engine, so they are usable alone;
- the engine runs any steps and knows no method;
- nothing below the CLI imports the CLI;

and one name for one thing: no two public classes of the package share a name.
Imports are read with ``ast`` (those inside functions count too), nothing is imported.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import instructforge

PACKAGE = "instructforge"
SRC = Path(instructforge.__file__).parent

# (layer, what it must not import): layers and targets are sub-packages of the package.
FORBIDDEN = [
    ("llm", "methods"),
    ("llm", "engine"),
    ("engine", "methods"),
    *((layer, "cli") for layer in ("llm", "engine", "methods", "analysis", "tuning", "")),
]


def _module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in the file, relative ones resolved."""
    here = _module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, module))
            # ``from pkg import sub``: the name may itself be a module.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _layer(module: str, package: str) -> str | None:
    """The sub-package a module of ``package`` belongs to ('' for top-level modules)."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    return parts[1] if len(parts) > 2 else ""


def import_violations(root: Path) -> list[str]:
    """``file:line: LAYER imports MODULE`` for every import that breaks :data:`FORBIDDEN`."""
    package = root.name
    problems = []
    for path in sorted(root.rglob("*.py")):
        layer = _layer(_module_name(path, root), package)
        if path.name == "__init__.py" and path.parent != root:
            layer = path.parent.relative_to(root).parts[0]
        reported: set[int] = set()  # one problem per import statement
        for line, module in imported_modules(path, root):
            target = module.split(".")
            if target[0] != package or len(target) < 2 or line in reported:
                continue
            for src, dst in FORBIDDEN:
                if layer == src and target[1] == dst:
                    where = f"{package}/{src}" if src else f"{package} (top level)"
                    problems.append(f"{path.relative_to(root.parent)}:{line}: {where} imports "
                                    f"{module}")
                    reported.add(line)
                    break
    return problems


def duplicate_class_names(root: Path) -> dict[str, list[str]]:
    """Public class names defined in more than one module of the package."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(root.parent)))
    return {name: files for name, files in where.items() if len(files) > 1}


# -- the package as it is ---------------------------------------------------------------------

def test_imports_point_the_way_the_architecture_says():
    assert import_violations(SRC) == []


def test_no_two_public_classes_share_a_name():
    assert duplicate_class_names(SRC) == {}


# -- the checker itself, on a planted tree ----------------------------------------------------

def _plant(root: Path, files: dict[str, str]) -> Path:
    pkg = root / PACKAGE
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for parent in path.relative_to(root).parents:
            if parent != Path(".") and not (root / parent / "__init__.py").exists():
                (root / parent / "__init__.py").write_text("")
    return pkg


def test_a_backend_importing_a_method_is_caught(tmp_path):
    pkg = _plant(tmp_path, {"llm/base.py": "from instructforge.methods.magpie import run\n",
                            "methods/magpie.py": "from instructforge.llm.base import LLM\n"})
    assert import_violations(pkg) == [
        "instructforge/llm/base.py:1: instructforge/llm imports instructforge.methods.magpie"]


def test_an_engine_import_of_a_method_inside_a_function_is_caught(tmp_path):
    pkg = _plant(tmp_path, {"engine/run.py": "def f():\n    from ..methods import respond\n"})
    assert import_violations(pkg) == [
        "instructforge/engine/run.py:2: instructforge/engine imports instructforge.methods"]


def test_a_backend_importing_the_engine_is_caught(tmp_path):
    pkg = _plant(tmp_path, {"llm/__init__.py": "import instructforge.engine.store\n"})
    assert len(import_violations(pkg)) == 1


def test_only_the_cli_may_import_the_cli(tmp_path):
    pkg = _plant(tmp_path, {"analysis/filter.py": "from instructforge.cli import common\n",
                            "records.py": "from instructforge import cli\n",
                            "cli/analyze.py": "from instructforge.cli.common import app\n"
                                              "from instructforge.methods import respond\n"})
    assert import_violations(pkg) == [
        "instructforge/analysis/filter.py:1: instructforge/analysis imports instructforge.cli",
        "instructforge/records.py:1: instructforge (top level) imports instructforge.cli"]


def test_two_classes_with_one_name_are_caught(tmp_path):
    pkg = _plant(tmp_path, {"a.py": "class Verdict: ...\nclass _Private: ...\n",
                            "b/c.py": "class Verdict: ...\nclass _Private: ...\n"})
    assert duplicate_class_names(pkg) == {
        "Verdict": ["instructforge/a.py", "instructforge/b/c.py"]}
