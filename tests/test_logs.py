"""smartroute/logs.py: the package logger and QuietLog, the rate limit of lines a peer can
trigger."""

from __future__ import annotations

import logging

import pytest

import smartroute  # noqa: F401  - the package installs the NullHandler
from smartroute.logs import QUIET_MEMORY, QuietLog, logger

LOG = logging.getLogger("smartroute.test_logs")


def levels(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(record.levelno, record.getMessage()) for record in caplog.records
            if record.name == LOG.name]


def test_the_first_line_of_a_key_is_a_warning_and_repeats_are_debug_with_a_count(
        caplog: pytest.LogCaptureFixture) -> None:
    quiet = QuietLog(LOG)
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        for i in range(3):
            quiet.warning("body:abc", "dropped a message from %s (%d)", "abc", i)
    assert levels(caplog) == [
        (logging.WARNING, "dropped a message from abc (0)"),
        (logging.DEBUG, "dropped a message from abc (1) (seen 2 times)"),
        (logging.DEBUG, "dropped a message from abc (2) (seen 3 times)"),
    ]


def test_each_key_gets_its_own_first_warning(caplog: pytest.LogCaptureFixture) -> None:
    quiet = QuietLog(LOG)
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        quiet.warning("a", "from a")
        quiet.warning("b", "from b")
        quiet.warning("a", "from a")
        quiet.warning("b", "from b")
    assert levels(caplog) == [(logging.WARNING, "from a"), (logging.WARNING, "from b"),
                              (logging.DEBUG, "from a (seen 2 times)"),
                              (logging.DEBUG, "from b (seen 2 times)")]


def test_a_million_repeats_cost_one_warning_at_the_default_level(
        caplog: pytest.LogCaptureFixture) -> None:
    quiet = QuietLog(LOG)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for _ in range(100_000):
            quiet.warning("garbage", "garbage from a peer")
    assert levels(caplog) == [(logging.WARNING, "garbage from a peer")]


def test_memory_is_bounded_and_the_oldest_key_is_forgotten_first(
        caplog: pytest.LogCaptureFixture) -> None:
    quiet = QuietLog(LOG, memory=2)
    with caplog.at_level(logging.DEBUG, logger=LOG.name):
        quiet.warning("a", "a")
        quiet.warning("b", "b")
        quiet.warning("a", "a")      # a is now the newest: b is the oldest
        quiet.warning("c", "c")      # three keys: b is forgotten
        quiet.warning("a", "a")      # still remembered
        quiet.warning("b", "b")      # forgotten: a WARNING again
    assert levels(caplog) == [
        (logging.WARNING, "a"), (logging.WARNING, "b"), (logging.DEBUG, "a (seen 2 times)"),
        (logging.WARNING, "c"), (logging.DEBUG, "a (seen 3 times)"), (logging.WARNING, "b"),
    ]


def test_by_default_it_remembers_quiet_memory_keys(caplog: pytest.LogCaptureFixture) -> None:
    quiet = QuietLog(LOG)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for key in range(QUIET_MEMORY):
            quiet.warning(str(key), "first")
        quiet.warning("0", "remembered")          # all QUIET_MEMORY keys are still known
        quiet.warning("new", "first")             # one more: the oldest (now "1") goes
        quiet.warning("1", "forgotten")
    assert [m for _, m in levels(caplog)] == ["first"] * (QUIET_MEMORY + 1) + ["forgotten"]


def test_the_package_logger_is_smartroute_with_a_null_handler() -> None:
    assert logger.name == "smartroute"
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
