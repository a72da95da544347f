"""Which build of the core is loaded: the mypyc-compiled modules or their sources, never a mix,
never a compiled module older than its source (smartroute/_compiled.py)."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import smartroute
from smartroute import _compiled

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = _compiled.extension_modules()
needs_extensions = pytest.mark.skipif(
    not EXTENSIONS, reason="nothing compiled (a pure install): `make build` compiles the core")

PROBE = """
import json, smartroute, smartroute.wire, smartroute.protocol
print(json.dumps({"compiled": smartroute.compiled, "build": smartroute.build,
                  "wire": smartroute.wire.__file__, "protocol": smartroute.protocol.__file__}))
"""


def probe(cwd: Path, **env: str) -> tuple[dict[str, object], str]:
    """Import smartroute in a fresh interpreter from ``cwd``: what it loaded, and its stderr."""
    environ = {k: v for k, v in os.environ.items() if k != _compiled.PURE_ENV}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env={**environ, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout), done.stderr


def is_extension(path: str) -> bool:
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_this_run_loads_one_build_for_every_compiled_module() -> None:
    pure_asked = os.environ.get(_compiled.PURE_ENV, "") not in ("", "0")
    if pure_asked or not EXTENSIONS:
        assert smartroute.compiled is False
    for name in EXTENSIONS:
        module = importlib.import_module(f"smartroute.{name}")
        assert is_extension(module.__file__ or "") is smartroute.compiled, name


@needs_extensions
def test_the_environment_switch_loads_the_sources() -> None:
    compiled, _ = probe(ROOT)
    assert compiled["compiled"] is True, compiled["build"]
    assert is_extension(str(compiled["wire"])) and is_extension(str(compiled["protocol"]))
    pure, _ = probe(ROOT, SMARTROUTE_PURE="1")
    assert pure["compiled"] is False
    assert pure["build"] == "pure Python: SMARTROUTE_PURE is set"
    assert str(pure["wire"]).endswith("wire.py") and str(pure["protocol"]).endswith("protocol.py")


@needs_extensions
def test_an_extension_older_than_its_source_is_not_loaded(tmp_path: Path) -> None:
    # A copy of the checkout's package (copytree keeps file times), then one source "edited".
    shutil.copytree(ROOT / "smartroute", tmp_path / "smartroute",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    as_built, _ = probe(tmp_path)
    assert as_built["compiled"] is True, as_built["build"]
    edited = time.time() + 5
    os.utime(tmp_path / "smartroute" / "wire.py", (edited, edited))
    stale, stderr = probe(tmp_path)
    assert stale["compiled"] is False
    assert "wire changed since the compiled build" in str(stale["build"])
    assert "wire changed since the compiled build" in stderr  # the warning, once
    # All or nothing: protocol.py is unchanged, but its compiled code calls the compiled wire.
    assert str(stale["protocol"]).endswith("protocol.py")
