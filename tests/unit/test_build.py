"""The data path is tested in the form it is installed in (setup.py, vproxy/build.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

from helpers import ROOT, source_of
from vproxy import build


def test_compiled_modules_exist_and_are_importable() -> None:
    for name in build.COMPILED:
        assert source_of(importlib.import_module(name)).is_file(), name


def test_the_test_command_tests_the_compiled_form() -> None:
    """Without this, a build that fell back to pure Python (no compiler) would pass
    every test while the product runs at another speed."""
    if os.environ.get("VPROXY_PURE_PYTHON"):  # scripts/test.sh's pure-Python run
        assert build.build_kind() == "pure Python"
        return
    missing = sorted(set(build.COMPILED + build.C_HELPERS) - set(build.compiled_modules()))
    assert not missing, (
        f"not compiled: {missing}: re-run `pip install -e .` (needs a C compiler and "
        "Python's headers), or set VPROXY_PURE_PYTHON=1 to test pure Python"
    )
    assert build.build_kind() == "compiled"
    # An extension shadows its .py: an edit since the last install would go untested.
    stale = []
    for name in build.COMPILED:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        if source_of(module).stat().st_mtime > os.stat(module.__file__).st_mtime:
            stale.append(name)
    for name in build.C_HELPERS:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        source = ROOT / "src" / (name.replace(".", "/") + ".c")
        if source.stat().st_mtime > os.stat(module.__file__).st_mtime:
            stale.append(name)
    assert not stale, f"edited since compiled: {stale}: re-run `pip install -e .`"


def test_setup_compiles_exactly_the_listed_modules() -> None:
    code = (
        "import sys; sys.argv = ['setup.py', '--version']\n"
        "src = open('setup.py').read().split('class OptionalBuildExt')[0]\n"
        "exec(src); print('\\n'.join(compiled_sources()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [f"src/{name.replace('.', '/')}.py" for name in build.COMPILED]
    assert all((ROOT / path).is_file() for path in out)
