"""routing.py: mode + target + table -> who gets one send_to."""

from __future__ import annotations

import collections
import time
from typing import Any

import pytest

from smartroute import routing
from smartroute.errors import UsageError
from smartroute.modes import ReceiveMode
from smartroute.patterns import Pattern
from smartroute.registry import Table
from smartroute.routing import Plan, Router

EQ, NOT_EQ, ALL, REGEX, ANY = (ReceiveMode.EQ, ReceiveMode.NOT_EQ, ReceiveMode.ALL,
                               ReceiveMode.REGEX, ReceiveMode.ANY)
ME = b"\x01" * 16
B = b"\x0b" * 16
C = b"\x0c" * 16


@pytest.fixture
def table() -> Table:
    """Ours: user:alice(1) room:7(2) room:7(3) svc:echo(4); B: room:7 x3, user:bob, svc:echo;
    C: room:8, user:alice; D: a replica with no subscribers."""
    t = Table(ME, incarnation=1)
    for name in ["user:alice", "room:7", "room:7", "svc:echo"]:
        t.add_local(name, {})
    t.replace(B, 1, 5, [(1, "room:7", {}), (2, "room:7", {}), (3, "room:7", {}),
                        (4, "user:bob", {}), (5, "svc:echo", {})])
    t.replace(C, 1, 2, [(1, "room:8", {}), (2, "user:alice", {})])
    t.replace(b"\x0d" * 16, 1, 0, [])
    return t


@pytest.fixture
def router(table: Table) -> Router:
    return Router(table, regex_cache_size=4, max_pattern_length=16)


def test_eq_one_name(router: Router) -> None:
    assert router.plan(EQ, "room:7") == Plan(5, [2, 3], {B: None})
    assert router.plan(EQ, "room:8") == Plan(1, [], {C: None})
    assert router.plan(EQ, "user:alice") == Plan(2, [1], {C: None})
    assert router.plan(EQ, "nobody") == Plan(0, [], {})


def test_eq_a_list_of_names(router: Router) -> None:
    plan = router.plan(EQ, ["room:7", "room:8", "nobody"])
    assert plan == Plan(6, [2, 3], {B: None, C: None})


def test_eq_a_name_listed_twice_is_counted_once(router: Router) -> None:
    assert router.plan(EQ, ["room:7", "room:7"]) == router.plan(EQ, "room:7")


def test_a_remote_node_is_planned_once_whatever_its_number_of_subscribers(
        router: Router) -> None:
    plan = router.plan(EQ, ["room:7", "user:bob", "svc:echo"])
    assert plan.remote == {B: None}
    assert plan.matches == 2 + 1 + 3 + 1 + 1


def test_not_eq(router: Router) -> None:
    plan = router.plan(NOT_EQ, "room:7")
    assert plan == Plan(1 + 1 + 2 + 2, [1, 4], {B: None, C: None})
    assert router.plan(NOT_EQ, ["room:7", "user:bob", "svc:echo"]) == Plan(3, [1], {C: None})
    assert router.plan(NOT_EQ, ["room:7", "room:8", "user:alice", "user:bob",
                                "svc:echo"]) == Plan(0, [], {})


def test_all_skips_nodes_without_subscribers(router: Router) -> None:
    assert router.plan(ALL, None) == Plan(4 + 5 + 2, [1, 2, 3, 4], {B: None, C: None})
    assert router.plan(ALL, "ignored") == router.plan(ALL, None)


def test_regex_with_one_pattern(router: Router) -> None:
    assert router.plan(REGEX, "^room:") == Plan(6, [2, 3], {B: None, C: None})
    assert router.plan(REGEX, "alice$") == Plan(2, [1], {C: None})
    assert router.plan(REGEX, "m:8") == Plan(1, [], {C: None})  # re.search: anywhere in the name


def test_regex_with_a_list_of_overlapping_patterns_counts_each_subscriber_once(
        router: Router) -> None:
    plan = router.plan(REGEX, ["^user:", "alice", "^svc:"])
    assert plan == Plan(1 + 1 + 1 + 1 + 1, [1, 4], {B: None, C: None})


def test_local_ids_are_in_subscription_order_for_pattern_modes(router: Router) -> None:
    assert router.plan(REGEX, ["echo", "room", "alice"]).local == [1, 2, 3, 4]
    assert router.plan(NOT_EQ, "nobody").local == [1, 2, 3, 4]


def test_any_picks_exactly_one_subscriber_round_robin_over_local_and_remote(
        table: Table, router: Router) -> None:
    # room:7 has 2 local subscribers and 3 on B: five candidates, each chosen once per round.
    chosen: collections.Counter[tuple[bytes | None, int]] = collections.Counter()
    for _ in range(10):
        plan = router.plan(ANY, "room:7")
        assert plan.matches == 1
        assert len(plan.local) + len(plan.remote) == 1
        for sub_id in plan.local:
            chosen[None, sub_id] += 1
        for node, chosen_id in plan.remote.items():
            assert chosen_id is not None  # the receiver is told which one
            chosen[node, chosen_id] += 1
    assert chosen == {(None, 2): 2, (None, 3): 2, (B, 1): 2, (B, 2): 2, (B, 3): 2}


def test_any_over_a_list_of_names(router: Router) -> None:
    picks = [router.plan(ANY, ["user:alice", "room:8"]) for _ in range(3)]
    assert picks == [Plan(1, [1], {}), Plan(1, [], {C: 2}), Plan(1, [], {C: 1})]


def test_any_to_a_lone_remote_subscriber_chooses_it_and_then_balances_once_joined(
        table: Table, router: Router) -> None:
    # user:bob lives only on B (the fast path); a second, local one joins: both take turns.
    assert [router.plan(ANY, "user:bob") for _ in range(2)] == [Plan(1, [], {B: 4})] * 2
    sub, _, _ = table.add_local("user:bob", {})
    picks = [router.plan(ANY, "user:bob") for _ in range(4)]
    assert picks.count(Plan(1, [sub], {})) == picks.count(Plan(1, [], {B: 4})) == 2


def test_any_without_candidates_plans_nothing(router: Router) -> None:
    assert router.plan(ANY, "nobody") == Plan(0, [], {})
    assert router.plan(ANY, []) == Plan(0, [], {})


def test_any_keeps_balancing_after_the_candidates_change(table: Table, router: Router) -> None:
    table.purge(B)
    picks = {tuple(router.plan(ANY, "room:7").local) for _ in range(4)}
    assert picks == {(2,), (3,)}


def test_the_plan_follows_the_table(table: Table, router: Router) -> None:
    sub, _, _ = table.add_local("room:8", {})
    assert router.plan(EQ, "room:8") == Plan(2, [sub], {C: None})
    table.purge(C)
    assert router.plan(EQ, "room:8") == Plan(1, [sub], {})
    table.remove_local(sub)
    assert router.plan(EQ, "room:8") == Plan(0, [], {})


# --- the receiving side ---------------------------------------------------------------------------

def test_local_matches_for_each_mode(router: Router) -> None:
    assert router.local_matches(EQ, "room:7", None) == [2, 3]
    assert router.local_matches(EQ, ["svc:echo", "room:7", "room:7"], None) == [4, 2, 3]
    assert router.local_matches(NOT_EQ, ["room:7"], None) == [1, 4]
    assert router.local_matches(ALL, None, None) == [1, 2, 3, 4]
    assert router.local_matches(REGEX, ["^room", "echo"], None) == [2, 3, 4]
    assert router.local_matches(EQ, "room:8", None) == []


def test_local_matches_any_takes_the_chosen_subscriber(router: Router) -> None:
    assert router.local_matches(ANY, "room:7", 3) == [3]


def test_local_matches_any_falls_back_when_the_chosen_subscriber_left(
        table: Table, router: Router) -> None:
    table.remove_local(2)
    assert router.local_matches(ANY, "room:7", 2) == [3]
    assert router.local_matches(ANY, ["nobody", "room:7"], 2) == [3]
    assert router.local_matches(ANY, "room:7", None) == [3]
    table.remove_local(3)
    assert router.local_matches(ANY, "room:7", 2) == []


# --- patterns -----------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["(", "[a-", "a{2,1}", "x" * 17, "(?P<n>a)(?P<n>b)",
                                     r"(a)\1", "a(?=b)", "(?i)room", "x{9999}"])
def test_bad_or_over_long_patterns_are_usage_errors(router: Router, pattern: str) -> None:
    with pytest.raises(UsageError):
        router.plan(REGEX, pattern)
    with pytest.raises(UsageError):
        router.plan(REGEX, ["^room", pattern])
    with pytest.raises(UsageError):
        router.local_matches(REGEX, pattern, None)


def test_a_pattern_at_the_length_limit_is_fine(router: Router) -> None:
    assert router.plan(REGEX, "x" * 16) == Plan(0, [], {})


def test_the_regex_cache_stays_bounded(router: Router) -> None:
    for i in range(100):
        router.plan(REGEX, f"^room:{i}$")
        router.local_matches(REGEX, [f"a{i}", f"b{i}"], None)
    assert len(router._patterns) <= 4  # cache size of the fixture
    assert router.pattern("^room:99$") is router.pattern("^room:99$")


def test_a_refused_pattern_is_remembered_not_compiled_again(
        router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = routing.compile_pattern

    def counting(source: str, **kwargs: Any) -> Pattern:
        calls.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(routing, "compile_pattern", counting)
    for _ in range(3):
        with pytest.raises(UsageError, match="backreferences"):
            router.local_matches(REGEX, r"(a)\1", None)
    assert calls == [r"(a)\1"]


def test_a_catastrophic_pattern_plans_at_once(table: Table) -> None:
    for i in range(100):
        table.add_local("a" * 200 + str(i), {})
    router = Router(table, regex_cache_size=4, max_pattern_length=512)
    started = time.perf_counter()
    plan = router.plan(REGEX, "(a+)+$")  # re: hours on one of those names
    assert time.perf_counter() - started < 1.0  # safety bound; measured ~1 ms
    assert plan.matches == 0
    assert router.plan(REGEX, "(a+)+[0-9]+$").matches == 100


def test_the_any_round_robin_memory_stays_bounded(router: Router) -> None:
    for i in range(100):
        router.plan(ANY, ["room:7", f"n{i}"])
    assert len(router._turns) <= 4
