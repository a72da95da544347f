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
    """Every subscriber whose name matches a pattern (``re.search``), one or a list."""
    ANY = 4
    """Exactly one subscriber among those ``EQ`` would reach, round-robin."""
