"""The package reads by stage: data → model → train → evaluate → report → annotate, and imports never go up.

Static checks over ``src/celler`` (ast only, nothing imported): every ``celler.*`` import, at module level or inside
a function, goes to the same stage or one below; the shared leaves (``config``, ``errors``, ``resources``) may be
imported by any stage; the top layer (``stages``, ``cli``, ``preflight``) may import anything.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "celler"
LEAVES = {"config", "errors", "resources", "__init__", "__version__"}  # imported by every stage
RANK = {"data": 0, "model": 1, "train": 2, "evaluate": 3, "report": 4, "annotate": 5,
        "stages": 6, "cli": 6, "preflight": 6}
MAX_LINES = 420  # a module past ~400 lines usually holds two ideas


def stage_of(parts: list[str]) -> str | None:
    """The stage of ``celler.<parts>``: its first component, or None for a shared leaf."""
    head = parts[0] if parts else "__init__"
    return None if head in LEAVES else head


def imports(path: Path, package: list[str] | None = None) -> list[list[str]]:
    """Every ``celler.*`` import of ``path``, as the parts after ``celler``; a relative import (``from ..report
    import x``) is resolved against ``package``, the module's package inside celler (default: from its path)."""
    if package is None:
        package = list(path.relative_to(SRC).parent.parts) if path.is_relative_to(SRC) else []
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
            rest = base + (node.module.split(".") if node.module else [])
            out += [rest + [a.name] if not rest else rest for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "celler":
            rest = node.module.split(".")[1:]
            out += [rest + [a.name] if not rest else rest for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "celler"]
    return out


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_belongs_to_a_stage():
    stray = [str(p.relative_to(SRC)) for p in MODULES
             if stage_of(list(p.relative_to(SRC).with_suffix("").parts)) not in (*RANK, None)]
    assert not stray, f"modules outside the stages: {stray}"


def upward_imports(path: Path, own: str | None, package: list[str] | None = None) -> list[str]:
    """The ``celler.*`` imports of ``path`` that go to a later stage than ``own`` (any stage, for a leaf)."""
    return [".".join(i) for i in imports(path, package)
            if (s := stage_of(i)) is not None and (own is None or RANK[s] > RANK[own])]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_never_go_up_a_stage(path):
    own = stage_of(list(path.relative_to(SRC).with_suffix("").parts))
    up = upward_imports(path, own)
    assert not up, f"{path.relative_to(SRC)} ({own or 'shared leaf'}) imports a later stage: {up}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule can fail: a data module importing the model (inside a function) is caught, a model module
    importing data is not, and a shared leaf may import no stage at all."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from celler.model.encoder import Encoder\n")
    assert upward_imports(bad, "data") == ["model.encoder"]
    assert upward_imports(bad, "train") == []
    assert upward_imports(bad, None) == ["model.encoder"]
    relative = tmp_path / "relative.py"  # as if it were celler/data/relative.py
    relative.write_text("from ..model.encoder import Encoder\nfrom . import io\nfrom .. import errors\n")
    assert upward_imports(relative, "data", ["data"]) == ["model.encoder"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_holds_two_ideas_by_size(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)}: {n} lines; split it by idea"


def test_bundled_files_are_found_through_resources_only():
    """A module that finds files relative to itself breaks when it moves (synth.py did, one folder deeper):
    only ``celler.resources`` locates the repository's ``resources/``."""
    own = [str(p.relative_to(SRC)) for p in MODULES if "__file__" in p.read_text() and p.name != "resources.py"]
    assert not own, f"use celler.resources.resources_dir() instead of __file__ in {own}"
