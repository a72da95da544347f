"""``Checked[T]``: the type of a public argument that the API checks itself at run time.

For type checkers ``Checked[T]`` is ``T``: nothing has the method ``_CheckedAtRunTime`` asks
for, so a caller must pass a ``T`` (``mypy`` reports ``expected "T | _CheckedAtRunTime"``).
At run time the compiled build (README, "Building") cannot check a protocol, so it checks
nothing on entry and the function's own check runs first, with its documented error: with a
plain ``T``, mypyc's generated ``TypeError`` would come first instead. A function taking a
``Checked[T]`` must narrow it to ``T`` before use, so mypy makes sure it does check it.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, Union

_T = TypeVar("_T")


class _CheckedAtRunTime(Protocol):
    """No object has this method: it only widens ``Checked[T]`` past what mypyc can check."""

    def __smartroute_checked_at_run_time__(self) -> None: ...


Checked = Union[_T, _CheckedAtRunTime]  # noqa: UP007 (a generic alias needs Union here)
