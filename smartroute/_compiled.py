"""Which build of the core is in use: the modules compiled with mypyc, or their sources.

setup.py may compile some core modules (its ``COMPILED_MODULES``) into extension modules next
to their ``.py`` files; Python then imports the extension. The ``.py`` files stay the reference
and the fallback. This module is imported first thing by ``smartroute/__init__.py`` and
decides once, for all of them together (compiled modules call each other directly, so a mix
of the two builds is never loaded):

- ``SMARTROUTE_PURE`` set (to anything but "" or "0"): the sources, whatever is compiled;
- no extension modules: the sources;
- in a source checkout (``setup.py`` beside the package), an extension older than its source
  (edited since the last build): the sources, with a warning, never stale compiled code;
- otherwise the compiled modules.

Only this standard-library import machinery is used: nothing here is compiled itself.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PURE_ENV = "SMARTROUTE_PURE"
"""Set it (to anything but "" or "0") to run the pure-Python sources of the compiled modules."""

_PACKAGE_DIR = Path(__file__).resolve().parent
_PACKAGE = __name__.rpartition(".")[0]
_SHARED_LIBRARY = "_native__mypyc"
"""mypyc's shared library of the group (setup.py's ``group_name`` plus mypyc's suffix)."""

_log = logging.getLogger(_PACKAGE)


def extension_modules() -> dict[str, Path]:
    """The package's compiled modules that have a source beside them: name -> extension."""
    found: dict[str, Path] = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in _PACKAGE_DIR.glob("*" + suffix):
            name = path.name[: -len(suffix)]
            if name != _SHARED_LIBRARY and (_PACKAGE_DIR / f"{name}.py").is_file():
                found[name] = path
    return found


def _stale(extensions: dict[str, Path]) -> list[str]:
    """Modules whose source changed after their extension was built (source checkouts only:
    an installed wheel's file times say nothing about edits)."""
    if not (_PACKAGE_DIR.parent / "setup.py").is_file():
        return []
    return sorted(name for name, so in extensions.items()
                  if (_PACKAGE_DIR / f"{name}.py").stat().st_mtime > so.stat().st_mtime)


class _SourceFinder:
    """Imports ``smartroute.<name>`` from ``<name>.py`` for the compiled modules, so the
    extensions beside the sources are not loaded."""

    def __init__(self, names: Sequence[str]) -> None:
        self._names = {f"{_PACKAGE}.{name}": _PACKAGE_DIR / f"{name}.py" for name in names}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self._names.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def choose() -> tuple[bool, str]:
    """Decide which build to import (see the module docstring): ``(compiled, why)``."""
    extensions = extension_modules()
    if not extensions:
        return False, "pure Python: nothing compiled (SMARTROUTE_PURE=1 at install, or no build)"
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        why = f"pure Python: {PURE_ENV} is set"
    elif stale := _stale(extensions):
        why = (f"pure Python: {', '.join(stale)} changed since the compiled build "
               "(run `make build` to compile again)")
        _log.warning("smartroute: %s", why)
    else:
        return True, f"compiled with mypyc: {', '.join(sorted(extensions))}"
    sys.meta_path.insert(0, _SourceFinder(sorted(extensions)))
    return False, why


compiled, build = choose()
"""``smartroute.compiled``: True when the modules compiled with mypyc are in use (README,
"Building"); ``smartroute.build`` says which build in words, and why (``smartroute --version``
prints it)."""
