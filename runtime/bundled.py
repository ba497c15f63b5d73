"""The example modules shipped as package data (built from examples/wasm/*.c and *.rs)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

EXAMPLES = ("hello", "handler", "kvcounter", "loop", "membomb", "escape", "recurse", "wordcount")


def example_path(name: str) -> Path:
    """Filesystem path of the bundled example module ``name`` (e.g. "hello")."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example module {name!r}; choose one of {', '.join(EXAMPLES)}")
    return Path(str(resources.files("runtime") / "examples" / f"{name}.wasm"))


def example_bytes(name: str) -> bytes:
    """Bytes of the bundled example module ``name``."""
    return example_path(name).read_bytes()
