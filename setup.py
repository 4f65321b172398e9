"""Build: the data path's modules are compiled to C extensions with mypyc when possible.

The package is plain, fully typed Python; mypyc (part of mypy) turns the listed modules
into C extensions from those same sources: 25-45% fewer instructions per request or
session (docs/performance.md, "Compiled modules"). Nothing else changes: the same
tests run against either form.

- ``VPROXY_PURE_PYTHON=1`` skips compiling (pure Python, same behaviour, slower).
- Without a C compiler or Python's headers the build warns and installs pure Python.

An editable install (``pip install -e .``) puts the extensions next to the sources;
they are rebuilt by re-running the install after an edit (an extension shadows its
``.py``: ``scripts/test.sh`` reinstalls before testing).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _build_lists() -> Any:
    """vproxy/build.py, read from the file: the package's dependencies are not
    installed while it is built."""
    spec = importlib.util.spec_from_file_location("_vproxy_build", "src/vproxy/build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled_sources() -> list[str]:
    """The sources of vproxy.build.COMPILED."""
    return ["src/" + name.replace(".", "/") + ".py" for name in _build_lists().COMPILED]


class OptionalBuildExt(build_ext):
    """Builds the extensions, or none of them: a failed compile leaves pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python.h, ...
            for path in self.get_outputs():
                if os.path.exists(path):
                    os.remove(path)
            self.extensions: list[Any] = []
            print(f"vproxy: compiling failed ({exc}); installing pure Python", file=sys.stderr)


def c_helpers() -> list[Any]:
    """The extensions written in C (vproxy.build.C_HELPERS; ``src/<module path>.c``)."""
    return [
        Extension(name, ["src/" + name.replace(".", "/") + ".c"], extra_compile_args=["-O2"])
        for name in _build_lists().C_HELPERS
    ]


def ext_modules() -> list[Any]:
    if os.environ.get("VPROXY_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("vproxy: mypyc not available; installing pure Python", file=sys.stderr)
        return []
    return list(mypycify(compiled_sources(), opt_level="3", debug_level="0")) + c_helpers()


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
