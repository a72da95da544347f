"""The package logger and a rate limit for log lines that a peer can trigger."""

from __future__ import annotations

import collections
import logging

logger = logging.getLogger("smartroute")
"""The one package logger; modules log through children of it (``smartroute.node`` ...)."""

QUIET_MEMORY = 256
"""How many distinct log keys a ``QuietLog`` remembers before it forgets the oldest."""


class QuietLog:
    """Logs the first line of each key at WARNING and repeats at DEBUG, with bounded memory.

    A peer that sends garbage a million times must cost one WARNING, not a million (the idea of
    python-zeroconf's ``QuietLogger``).
    """

    def __init__(self, log: logging.Logger, memory: int = QUIET_MEMORY) -> None:
        self._log = log
        self._memory = memory
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()

    def warning(self, key: str, msg: str, *args: object) -> None:
        """Log ``msg`` at WARNING the first time ``key`` is seen, at DEBUG afterwards."""
        count = self._seen.pop(key, 0) + 1
        self._seen[key] = count
        if len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        if count == 1:
            self._log.warning(msg, *args)
        elif self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(msg + " (seen %d times)", *args, count)
