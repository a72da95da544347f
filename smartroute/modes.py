"""Receive modes: how a ``send_to`` target selects subscribers, and the checks of a target."""

from __future__ import annotations

import enum
from collections.abc import Callable

from .errors import UsageError

Target = str | list[str] | None
"""One name, a list of names (or patterns, for ``REGEX``), or None (``ALL``)."""


class ReceiveMode(enum.IntEnum):
    """How ``target`` selects subscribers; the integer value travels on the wire."""

    EQ = 0
    """Every subscriber whose name equals the target (one name or a list of names)."""
    NOT_EQ = 1
    """Every subscriber whose name is not in the target."""
    ALL = 2
    """Every subscriber; the target is ignored."""
    REGEX = 3
    """Every subscriber whose name matches a pattern, one or a list: the answer of
    ``re.search``, in time linear in the name (``smartroute.patterns``). Syntax: literals and
    escapes, ``.``, classes ``[...]`` with ranges and negation, ``\\d \\w \\s \\D \\W \\S``, ``|``,
    groups (capturing, named, ``(?:...)``), ``* + ? {m} {m,} {m,n}`` greedy or lazy, anchors
    ``^ $ \\A \\Z \\b \\B``. Backreferences, lookarounds, conditionals, atomic groups,
    possessive repeats, inline flags and huge counted repeats raise ``UsageError``."""
    ANY = 4
    """Exactly one subscriber among those ``EQ`` would reach, round-robin."""


_MODES = tuple(ReceiveMode)


def check_name(name: object, what: str, max_length: int) -> str:
    """A subscriber name, a sender or a target name: a str of 1..``max_length`` characters;
    returns it."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise UsageError(f"{what} must not be empty")
    if len(name) > max_length:
        raise UsageError(f"{what} is longer than {max_length} characters")
    return name


def check_mode(mode: object) -> ReceiveMode:
    """A ``ReceiveMode``, its value or its name (any case); ``UsageError`` otherwise."""
    if isinstance(mode, ReceiveMode):
        return mode
    if isinstance(mode, int) and not isinstance(mode, bool):
        if 0 <= mode < len(_MODES):
            return _MODES[mode]
        raise UsageError(f"unknown receive mode {mode!r}")
    if isinstance(mode, str) and mode.upper() in ReceiveMode.__members__:
        return ReceiveMode[mode.upper()]
    raise UsageError(f"unknown receive mode {mode!r}; use ReceiveMode.EQ, NOT_EQ, ALL, REGEX "
                     "or ANY")


def check_target(mode: object, target: object, *, max_name_length: int, max_names: int,
                 check_pattern: Callable[[str], None]) -> tuple[ReceiveMode, Target]:
    """The mode and target of a send, checked (``UsageError``/``TypeError`` saying what is
    wrong) and normalised: a tuple of names becomes a list, ``ALL``'s target None."""
    if (type(target) is str and type(mode) is ReceiveMode and mode is not ReceiveMode.REGEX
            and 0 < len(target) <= max_name_length):
        return mode, target  # the common case: one valid name
    mode = check_mode(mode)
    if mode is ReceiveMode.ALL:
        return mode, None
    if target is None:
        raise UsageError(f"{mode.name} needs a target")
    if isinstance(target, str):
        names = [target]
    elif isinstance(target, list | tuple):
        names = list(target)
        if len(names) > max_names:
            raise UsageError(f"more than {max_names} names in target")
        if not names and mode is not ReceiveMode.NOT_EQ:
            raise UsageError(f"{mode.name} needs at least one name in target")
    else:
        raise TypeError(f"target must be a str or a list of str, not {type(target).__name__}")
    if mode is ReceiveMode.REGEX:
        for pattern in names:
            if not isinstance(pattern, str):
                raise TypeError(f"a REGEX pattern is a str, not {type(pattern).__name__}")
            check_pattern(pattern)  # length and syntax
    else:
        for item in names:
            check_name(item, "target", max_name_length)
    return mode, target if isinstance(target, str) else names
