"""Optional compiled build of the simulator's hot modules (docs/SIMULATOR.md, "Compiled build").

Everything about the package is in pyproject.toml; this file only adds mypyc extension
modules, and only when asked:

    pip install mypy                                           # the compiler (not a dependency)
    WASMATRIX_COMPILE=1 python setup.py build_ext --inplace    # .so files next to the sources
    WASMATRIX_COMPILE=1 pip install --no-build-isolation .     # or a compiled install

Without ``WASMATRIX_COMPILE=1`` (the default, and README's commands) nothing is compiled and
the package is the pure-Python one. With it but without mypy importable (e.g. pip's isolated
build environment, hence ``--no-build-isolation``), the build says so and stays pure Python.
The compiled modules compute the same floats and the same trace as the pure ones.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# The modules compiled, and why others are not (docs/SIMULATOR.md): mesh/membership/meta.py
# validates wrongly typed input in __post_init__ (a compiled class rejects it first, with a
# TypeError), mesh/membership/messages.py keeps a class-level TYPE in dataclasses (mypyc
# makes it a field) and registers classes with a decorator.
COMPILED = [
    "mesh/coords.py",
    "mesh/wire.py",
    "mesh/membership/state.py",
    "mesh/membership/broadcast.py",
    "mesh/membership/awareness.py",
    "mesh/membership/suspicion.py",
    "mesh/node.py",
    "sim/engine.py",
]

# The pure code does not pass a strict type check in a few places (Optional members
# taken as present, a star-args constructor, dict-subclass overrides, an unannotated
# empty list in sim/intent.py); mypyc only needs
# the types it compiles against to hold at run time, and checks them there.
MYPY_FLAGS = [
    "--python-version=3.11",
    "--ignore-missing-imports",
    "--disable-error-code=union-attr",
    "--disable-error-code=call-arg",
    "--disable-error-code=misc",
    "--disable-error-code=assignment",
    "--disable-error-code=arg-type",
    "--disable-error-code=var-annotated",
]


def _ext_modules() -> list:
    if os.environ.get("WASMATRIX_COMPILE") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("WASMATRIX_COMPILE=1 but mypy is not importable here: building pure Python", file=sys.stderr)
        return []
    return mypycify(MYPY_FLAGS + COMPILED)


setup(ext_modules=_ext_modules())
