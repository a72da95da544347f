"""Receive modes: how a ``send_to`` target selects subscribers."""

from __future__ import annotations

import enum


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
