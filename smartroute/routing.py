"""From mode + target + table to a delivery plan: which local subscribers, which remote nodes.

A remote node is planned at most once per ``send_to``, whatever the number of its matching
subscribers: it fans out locally with ``local_matches`` on the same mode and target.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import NamedTuple

from .errors import UsageError
from .modes import ReceiveMode, Target
from .patterns import CacheBudget, Pattern, compile_pattern
from .registry import Table

_EQ, _ALL, _ANY = ReceiveMode.EQ, ReceiveMode.ALL, ReceiveMode.ANY
# Module constants: reading an enum member off its class costs ~150 ns, a global ~30 ns.

PLAN_CACHE_SIZE = 4096
"""EQ plans to one name kept until the table changes; emptied when full (names are many when
each user has one, but a busy name is planned again at once)."""


class Plan(NamedTuple):
    """Who gets one ``send_to``. Plans may be shared between sends: never change one."""

    matches: int
    """Subscribers matched in this node's view of the table."""
    local: list[int]
    """Our own sub ids, in subscription order."""
    remote: dict[bytes, int | None]
    """Node -> the sub id chosen there (ANY) or None (the node matches for itself)."""


class Router:
    """Plans deliveries; holds the bounded regex cache and the ANY round-robin counters."""

    def __init__(self, table: Table, *, regex_cache_size: int, max_pattern_length: int) -> None:
        self._table = table
        self._regex_cache_size = regex_cache_size
        self._max_pattern_length = max_pattern_length
        self._patterns: collections.OrderedDict[str, Pattern | UsageError] = (
            collections.OrderedDict())
        self._regex_budget = CacheBudget()  # the DFA caches of all cached patterns, together
        self._turns: collections.OrderedDict[tuple[str, ...], int] = collections.OrderedDict()
        self._turn_memory = regex_cache_size
        self._plans: dict[str, Plan] = {}
        self._plans_at = table.changes
        self.leaving: set[bytes] = set()
        """Nodes that said LEAVING (they drain): ANY chooses their subscribers only when no
        other node has one."""

    def pattern(self, source: str) -> Pattern:
        """The compiled pattern (linear-time, see ``patterns.py``), cached; a bad, unsupported
        or over-long pattern raises ``UsageError``."""
        compiled = self._patterns.get(source)
        if compiled is not None:
            self._patterns.move_to_end(source)
            if isinstance(compiled, UsageError):
                raise UsageError(str(compiled))
            return compiled
        if len(source) > self._max_pattern_length:
            raise UsageError(f"REGEX pattern longer than {self._max_pattern_length} characters")
        try:
            compiled = compile_pattern(source, budget=self._regex_budget)
        except UsageError as exc:
            # Remembered too: a peer repeating a refused pattern costs a lookup, not a compile.
            compiled = exc
        self._patterns[source] = compiled
        if len(self._patterns) > self._regex_cache_size:
            self._patterns.popitem(last=False)
        if isinstance(compiled, UsageError):
            raise UsageError(str(compiled))
        return compiled

    def names_matching(self, mode: ReceiveMode, target: Target,
                       names: Iterable[str]) -> Iterable[str]:
        """The names among ``names`` that NOT_EQ or REGEX select (EQ, ANY and ALL are planned
        without scanning names)."""
        if mode is ReceiveMode.NOT_EQ:
            excluded = _as_set(target)
            return (n for n in names if n not in excluded)
        assert mode is ReceiveMode.REGEX, mode
        patterns = [self.pattern(p) for p in _as_list(target)]
        if len(patterns) == 1:
            return patterns[0].select(names)
        return (n for n in names if any(p.search(n) for p in patterns))

    def plan(self, mode: ReceiveMode, target: Target) -> Plan:
        """Plan one ``send_to`` over the whole table."""
        table = self._table
        if mode is _EQ and type(target) is str:
            if self._plans_at == table.changes:
                plan = self._plans.get(target)
                if plan is not None:
                    return plan
            return self._plan_one(target)
        if mode is _ANY:
            if type(target) is str and target not in table.local_by_name:
                held = table.remote_by_name.get(target)
                if isinstance(held, tuple):
                    # One subscriber, on one peer (a service's single replica, the common
                    # request): no round robin to turn, and no candidates list.
                    return Plan(1, [], {held[0]: held[1]})
            return self._plan_any(_as_list(target))
        if mode is _ALL:
            remote_all: dict[bytes, int | None] = {
                node: None for node, r in table.replicas.items() if r.names}
            count = len(table.local) + sum(len(r.names) for r in table.replicas.values())
            return Plan(count, list(table.local), remote_all)
        if mode is _EQ:
            names: Iterable[str] = dict.fromkeys(_as_list(target))
        else:
            names = self.names_matching(mode, target, list(table.names()))
        count = 0
        local: list[int] = []
        remote: dict[bytes, int | None] = {}
        local_by_name = table.local_by_name
        remote_by_name = table.remote_by_name
        for name in names:
            ids = local_by_name.get(name)
            if ids:
                local.extend(ids)
                count += len(ids)
            held = remote_by_name.get(name)
            if held is None:
                continue
            if isinstance(held, tuple):  # one remote subscriber (see registry.Holders)
                remote[held[0]] = None
                count += 1
            else:
                for node, subs in held.items():
                    remote[node] = None
                    count += len(subs)
        if len(local) > 1 and mode is not _EQ:
            local.sort()
        return Plan(count, local, remote)

    def _plan_one(self, name: str) -> Plan:
        """EQ to one name, the most common send: planned once and cached until the table
        changes (``plan`` looks in the cache first; planning again was ~15% of a send)."""
        table = self._table
        plans = self._plans
        if self._plans_at != table.changes:
            plans.clear()
            self._plans_at = table.changes
        local = table.local_by_name.get(name)
        held = table.remote_by_name.get(name)
        count = len(local) if local else 0
        remote: dict[bytes, int | None] = {}
        if isinstance(held, tuple):  # one remote subscriber (see registry.Holders)
            remote[held[0]] = None
            count += 1
        elif held:
            for node, subs in held.items():
                remote[node] = None
                count += len(subs)
        plan = Plan(count, list(local) if local else [], remote)
        if len(plans) >= PLAN_CACHE_SIZE:
            plans.clear()
        plans[name] = plan
        return plan

    def _plan_any(self, names: list[str]) -> Plan:
        table = self._table
        candidates: list[tuple[bytes | None, int]] = []
        for name in dict.fromkeys(names):
            candidates.extend((None, sub_id) for sub_id in table.local_by_name.get(name, ()))
            candidates.extend(table.remote(name))
        if not candidates:
            return Plan(0, [], {})
        if self.leaving:
            staying = [c for c in candidates if c[0] not in self.leaving]
            if staying:
                candidates = staying
        key = tuple(names)
        turn = self._turns.pop(key, 0)
        self._turns[key] = turn + 1
        if len(self._turns) > self._turn_memory:
            self._turns.popitem(last=False)
        chosen_node, sub_id = candidates[turn % len(candidates)]
        if chosen_node is None:
            return Plan(1, [sub_id], {})
        return Plan(1, [], {chosen_node: sub_id})

    def local_matches(self, mode: ReceiveMode, target: Target, sub_id: int | None) -> list[int]:
        """Our sub ids that a message from a peer reaches (the peer planned us once)."""
        table = self._table
        if mode is _EQ and type(target) is str:  # the common case
            ids = table.local_by_name.get(target)
            return list(ids) if ids else []
        if mode is _ANY:
            # The sender chose one of ours; if it left meanwhile, another of the names takes it.
            if sub_id is not None and sub_id in table.local:
                return [sub_id]
            for name in _as_list(target):
                ids = table.local_by_name.get(name)
                if ids:
                    return [ids[0]]
            return []
        if mode is _ALL:
            return list(table.local)
        local: list[int] = []
        if mode is _EQ:
            for name in dict.fromkeys(_as_list(target)):
                local.extend(table.local_by_name.get(name, ()))
            return local
        for name in self.names_matching(mode, target, list(table.local_by_name)):
            local.extend(table.local_by_name[name])
        local.sort()
        return local


def _as_list(target: Target) -> list[str]:
    if target is None:
        return []
    if isinstance(target, str):
        return [target]
    return target


def _as_set(target: Target) -> set[str] | frozenset[str]:
    if target is None:
        return frozenset()
    if isinstance(target, str):
        return {target}
    return set(target)
