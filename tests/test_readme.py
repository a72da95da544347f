"""The README's quick start runs and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.processes


def test_quick_start_runs() -> None:
    text = README.read_text()
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S)
    assert code is not None, "README has no quick start block"
    result = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "matched 1" in lines
    assert "user:alice got Speak(user='bob', text='hi') from user:bob" in lines
    assert "{'echo': 'ping'}" in lines
