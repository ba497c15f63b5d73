"""The layer rule of docs/ARCHITECTURE.md, enforced by reading every import in every package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "runtime", "scheduler", "crdt", "mesh", "sim")
# package -> the project packages it must never import (docs/ARCHITECTURE.md, "Layers").
FORBIDDEN = {
    "model": {"runtime", "scheduler", "crdt", "mesh", "sim"},
    "runtime": {"scheduler", "crdt", "mesh", "sim"},
    "scheduler": {"runtime", "crdt", "mesh", "sim"},
    "crdt": {"runtime", "scheduler", "mesh", "sim"},
    "mesh": {"sim"},
    "sim": set(),
}


def imported_packages(source: str, filename: str = "<source>") -> set[tuple[int, str]]:
    """``(line, top-level package)`` of every absolute import anywhere in ``source`` (functions included)."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add((node.lineno, node.args[0].value.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    """Every forbidden import in ``package``'s files, as ``path:line imports pkg``."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, top in sorted(imported_packages(path.read_text(), str(path))):
            if top in FORBIDDEN[package]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_package_respects_the_layer_rule(package: str) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    assert violations(package) == []


def test_every_top_level_package_has_a_rule() -> None:
    tops = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert tops == set(PACKAGES)


def test_the_scanner_sees_imports_inside_functions_and_import_module() -> None:
    src = "import os\ndef f():\n    from mesh.node import NodeCore\n    import sim.engine as e\n    importlib.import_module('crdt.sync')\n"
    assert imported_packages(src) == {(1, "os"), (3, "mesh"), (4, "sim"), (5, "crdt")}


def test_model_is_pure_values() -> None:
    """``model`` needs the standard library and msgpack only: no I/O stack, no wasmtime, no pycrdt."""
    import sys

    allowed = set(sys.stdlib_module_names) | {"msgpack", "model"}
    used = {top for path in (ROOT / "model").rglob("*.py") for _, top in imported_packages(path.read_text(), str(path))}
    assert used - allowed == set()
    assert {"os", "socket", "threading", "time", "random"} & used == set()
