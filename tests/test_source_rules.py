"""Rules the source keeps, checked on its syntax trees (no imports, no running).

A module's underscored names are its own: another module that reaches for one
couples itself to something its owner may rename or remove without a word. A
name other modules need gets a public name in its module (``nodes/_common.py``
is private to the package, its helpers are public to the nodes).
"""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "miniflow"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The dotted name ``from <module> import ...`` names, resolved against ``path``."""
    if not node.level:
        return node.module or ""
    package = _module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def private_reaches(path: Path) -> list[str]:
    """Each place ``path`` imports, or reads through an imported module, another
    miniflow module's underscored name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _module_of(path)
    modules = {}  # local name -> miniflow module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(own, path, node)
            if not source.startswith("miniflow"):
                continue
            for alias in node.names:
                if _private(alias.name) and source != own:
                    found.append(f"{path.name}:{node.lineno} imports {source}.{alias.name}")
                # `from . import numpy_backend` binds a module
                modules[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("miniflow"):
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{path.name}:{node.lineno} reads "
                         f"{modules[node.value.id]}.{node.attr}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reaches_for_another_modules_private_names(path):
    assert private_reaches(path) == []


def test_the_rule_sees_each_kind_of_reach(tmp_path, monkeypatch):
    """The checker must be able to fail: a module written to break it, three ways."""
    fake = tmp_path / "miniflow"
    (fake / "nodes").mkdir(parents=True)
    bad = fake / "nodes" / "bad.py"
    bad.write_text("from ._common import _helper\n"
                   "from ..backends.numpy_backend import _kernel\n"
                   "from ..backends import numpy_backend\n"
                   "numpy_backend._table\n"
                   "from ._common import public\n"
                   "class A:\n    def f(self):\n        return self._own\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert private_reaches(bad) == [
        "bad.py:1 imports miniflow.nodes._common._helper",
        "bad.py:2 imports miniflow.backends.numpy_backend._kernel",
        "bad.py:4 reads miniflow.backends.numpy_backend._table",
    ]
