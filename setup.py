"""Build script: the pure core's hot path compiled with mypyc (README, "Building").

Everything else about the package is in pyproject.toml; this file exists only because the
compiled modules are setuptools extensions, which pyproject.toml cannot declare.

    pip install .                      compiled (needs a C compiler; mypy comes from PyPI)
    SMARTROUTE_PURE=1 pip install .    pure Python, nothing compiled
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

COMPILED_MODULES = [
    "smartroute/wire.py",
    "smartroute/streams.py",
    "smartroute/routing.py",
    "smartroute/membership.py",
    "smartroute/protocol.py",
    # The node's hot path: local dispatch and delivery (node, dispatch, messages), and
    # request/reply (requests).
    "smartroute/messages.py",
    "smartroute/requests.py",
    "smartroute/dispatch.py",
    "smartroute/node.py",
]
"""The modules compiled with mypyc: this list is the only place that names them. Each must
stay importable as plain Python (the reference and the fallback) and pass the whole suite both
ways. Left out on purpose: registry.py (its tests subclass and deep-copy ``Table``, which a
compiled class refuses), patterns.py, discovery/ and transport/ (see bench/PROFILE.md,
"Compiled with mypyc")."""


def pure() -> bool:
    """SMARTROUTE_PURE set to anything but "" or "0": build nothing."""
    return os.environ.get("SMARTROUTE_PURE", "") not in ("", "0")


def extensions() -> list[Extension]:
    if pure():
        return []
    # A build requirement (pyproject.toml), not a runtime one: imported only to compile.
    from mypyc.build import mypycify  # noqa: PLC0415

    # One group, named inside the package: the shared library is smartroute/_native__mypyc.*.so,
    # next to the modules (not a top-level module with a hash for a name).
    # --no-warn-unused-ignores: mypyc's own pass over the modules it follows reads a few
    # `# type: ignore`s (patterns.py's private `re` imports) as unused; `make typecheck`
    # stays the strict check.
    return mypycify(["--no-warn-unused-ignores", *COMPILED_MODULES],
                    group_name="smartroute._native", opt_level="3", target_dir="build/mypyc")


setup(ext_modules=extensions())
