"""Imports run one way: envs → workers → cifar10 → spec → builders → verify | trainers → analysis | benchmarks → cli.

The checker reads every .py of the project with `ast` (imports inside functions included) and reports, with file
and line, any import of a higher layer, any import between two packages of the same layer (verify and trainers
never import each other, nor do analysis and benchmarks), any use of another package's underscore name (by import
or as an attribute of an imported module) and any package that has no layer yet. tests/ may import anything.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"envs": 0, "workers": 1, "cifar10": 2, "spec": 3, "builders": 4, "verify": 5, "trainers": 5,
          "analysis": 6, "benchmarks": 6, "cli": 7}
UNLAYERED = {"tests"}
# Edges that stay only until their file moves to cli/ (issue 11): (file, imported package) -> why. An entry that
# no longer matches an import fails the test, so it is removed once the move has happened.
PENDING: dict = {}


@dataclass(frozen=True)
class Use:
    path: str     # relative to the tree's root
    line: int
    source: str   # the package of the importing file
    target: str   # the dotted name imported or used
    private: bool  # the name, or one of its parts, starts with an underscore (dunders aside)


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.endswith("__") for part in dotted.split("."))


def _packages(root: Path) -> set:
    return ({p.parent.name for p in root.glob("*/__init__.py")} | {p.stem for p in root.glob("*.py")}) - {"setup"}


def _files(root: Path):
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if not any(part.startswith(".") or part == "__pycache__" for part in parts):
            yield path


def _absolute(node: ast.ImportFrom, package: list) -> str:
    """The absolute module of `from ... import`, `package` being the importing file's package as parts."""
    if not node.level:
        return node.module or ""
    base = package[:len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _uses(root: Path, path: Path, packages: set) -> list:
    rel = path.relative_to(root)
    package = list(rel.parts[:-1])
    source = rel.parts[0] if len(rel.parts) > 1 else rel.stem
    tree = ast.parse(path.read_text(), filename=str(path))
    uses, bound = [], {}  # bound: local name -> the dotted project name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in packages:
                    uses.append(Use(str(rel), node.lineno, source, alias.name, _private(alias.name)))
                    local = alias.asname or alias.name.split(".")[0]
                    bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            if module.split(".")[0] not in packages:
                continue
            for alias in node.names:
                target = f"{module}.{alias.name}" if alias.name != "*" else module
                uses.append(Use(str(rel), node.lineno, source, target, _private(target)))
                bound[alias.asname or alias.name] = target
    for node in ast.walk(tree):  # module._name, module.sub._name, ...
        if isinstance(node, ast.Attribute) and _private(node.attr):
            chain, inner = [], node
            while isinstance(inner, ast.Attribute):
                chain.insert(0, inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in bound:
                uses.append(Use(str(rel), node.lineno, source, ".".join([bound[inner.id], *chain]), True))
    return uses


def all_uses(root: Path) -> list:
    packages = _packages(root)
    uses = [use for path in _files(root) for use in _uses(root, path, packages)]
    return sorted(uses, key=lambda use: (use.path, use.line, use.target))


def violations(root: Path, layers: dict = LAYERS, pending: dict | None = None) -> list:
    """'path:line: what' for every import or use against the layering; pending: exempted (file, package) pairs,
    each of which must still match an import."""
    pending = dict(PENDING if pending is None else pending)
    found, matched = [], set()
    for use in all_uses(root):
        target = use.target.split(".")[0]
        if use.source in UNLAYERED or target == use.source:
            continue
        where = f"{use.path}:{use.line}: {use.source} -> {use.target}"
        if use.private:
            found.append(f"{where}: uses a private name of another package")
        if use.source not in layers or target not in layers:
            found.append(f"{where}: {use.source if use.source not in layers else target} has no layer in LAYERS")
            continue
        if layers[target] < layers[use.source]:
            continue
        if (use.path, target) in pending:
            matched.add((use.path, target))
            continue
        relation = "a higher layer" if layers[target] > layers[use.source] else "a package of its own layer"
        found.append(f"{where}: imports {relation}")
    found += [f"{path}: PENDING exemption for {target} matches no import any more; remove it"
              for path, target in sorted(set(pending) - matched)]
    return found


def test_the_project_imports_one_way():
    assert violations(ROOT) == []


PLANTED = {
    "spec/__init__.py": "",
    "spec/ir.py": "import numpy as np\n",
    "builders/__init__.py": "from spec import ir\n",
    "trainers/__init__.py": "",
    "trainers/pytorch.py": "def optimizer(): pass\n\ndef _loss(): pass\n",
    "verify/__init__.py": "",
    "verify/steps.py": "import numpy\nfrom builders import resolve\n\n\ndef run():\n    from trainers import pytorch\n",
    "benchmarks/__init__.py": "",
    "benchmarks/plain.py": "from trainers import pytorch as trainer\n\nx = trainer.optimizer\ny = trainer._loss\n",
    "benchmarks/direct.py": "from trainers.pytorch import optimizer, _loss\n",
    "workers/__init__.py": "from . import status\n",
    "workers/status.py": "",
    "newpkg/__init__.py": "",
}


def _plant(tmp_path, files: dict) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_the_checker_finds_each_kind_of_forbidden_import_with_its_file_and_line(tmp_path):
    found = violations(_plant(tmp_path, PLANTED), pending={})
    assert found == [
        "benchmarks/direct.py:1: benchmarks -> trainers.pytorch._loss: uses a private name of another package",
        "benchmarks/plain.py:4: benchmarks -> trainers.pytorch._loss: uses a private name of another package",
        "verify/steps.py:6: verify -> trainers.pytorch: imports a package of its own layer",
    ], found


def test_the_checker_finds_upward_imports_unlayered_packages_and_stale_exemptions(tmp_path):
    files = {**PLANTED, "spec/ir.py": "import numpy as np\n\n\ndef f():\n    import builders\n",
             "newpkg/__init__.py": "import spec\n", "verify/steps.py": "from builders import resolve\n"}
    found = violations(_plant(tmp_path, files), pending={("verify/steps.py", "trainers"): "moving"})
    assert "spec/ir.py:5: spec -> builders: imports a higher layer" in found, found
    assert "newpkg/__init__.py:1: newpkg -> spec: newpkg has no layer in LAYERS" in found, found
    assert "verify/steps.py: PENDING exemption for trainers matches no import any more; remove it" in found, found


def test_trainers_never_import_verify(tmp_path):
    files = {**PLANTED, "trainers/supervisor.py": "from verify.runner import worker_env\n"}
    found = violations(_plant(tmp_path, files), pending={})
    assert "trainers/supervisor.py:1: trainers -> verify.runner.worker_env: imports a package of its own layer" \
        in found, found
