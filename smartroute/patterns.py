"""REGEX targets in time linear in the name: no pattern from the network can stall a node.

Python's ``re`` backtracks: ``(a+)+$``, ``(a|a)*b`` or ``.*.*.*.*x`` take seconds to minutes on a
256-character name, and a ``re`` match cannot be interrupted. A REGEX target is a peer's input,
so ``compile_pattern`` runs it on one of two engines:

* **a lazily built DFA** (the default). The pattern is parsed by the parser of ``re`` itself
  (``_parse_re``, the one use of that private API), so its syntax is exactly ``re``'s, and
  turned into a Thompson NFA (counted repeats expanded, at most ``MAX_NFA_STATES``). A search
  walks the name once, one character at a time; the DFA state is the set of NFA states alive
  at that position (the subset construction), built on demand and cached per state per
  character. The cache is bounded (``CacheBudget``, shared by a ``Router``'s patterns); when
  it is full it is dropped and the walk goes on, so a step costs at most one closure over the
  NFA: O(len(name) * NFA size), whatever the pattern.
* **``re`` itself**, only for flat patterns whose backtracking is provably short (see
  ``_backtracks_linearly`` for the proof): ``^user:``, ``room:[0-9]+$``, ``\\w+@\\d+``, and only
  on names of up to ``FAST_PATH_MAX_NAME`` characters (its bound is quadratic in the name).
  ``re`` runs them in C, several times faster than the DFA in Python.

The answer is ``re.search(pattern, name) is not None``, for the subset below; everything else
is refused with ``UsageError("bad REGEX pattern ...")``, never run.

Supported: literals and escapes, ``.``, classes ``[...]`` with ranges and negation, ``\\d \\w \\s
\\D \\W \\S``, ``|``, groups (capturing, named and ``(?:...)`` alike), ``* + ? {m} {m,} {m,n}``
greedy or lazy, anchors ``^ $ \\A \\Z \\b \\B``. Refused: backreferences, lookahead and
lookbehind, conditionals, atomic groups and possessive repeats, inline flags, counted repeats
that expand past ``MAX_NFA_STATES``, groups nested deeper than ``MAX_NESTING``.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Sequence

# The parser of ``re`` is private API (``re._parser`` since 3.11). It is imported here and
# nowhere else; its output is checked node by node below and anything unexpected is refused,
# so a change in a future Python makes patterns fail to compile, never match wrongly.
from re import _constants as _c  # type: ignore[attr-defined]
from re import _parser as _p  # type: ignore[attr-defined]
from typing import Any, Final

from .errors import UsageError

MAX_NFA_STATES = 1024
"""Largest NFA one pattern may compile to. Any pattern of at most 512 characters without
counted repeats fits (it has at most one state per character, plus one). A DFA step costs up
to one pass over the NFA, so this bounds the worst case per character (bench/regex_safety.py)."""

MAX_COMPILE_STEPS = 8 * MAX_NFA_STATES
"""Most parse-tree items the compiler may visit for one pattern. Counted repeats of something
that adds no state (``((a{0}){999}){999}``) cost work but no states, so the state bound alone
left compiling unbounded (measured: 3.8 s for those 18 characters, one more level > 120 s)."""

MAX_NESTING = 100
"""Deepest group nesting accepted; the compiler recurses once per level."""

DFA_CACHE_BYTES = 32 * 1024 * 1024
"""Memory the DFA caches of one ``Router``'s patterns may use together (estimated). Past it they
are dropped and rebuilt as the walks go on: a pattern from the network cannot grow a node."""

FAST_PATH_MAX_ITEMS = 32
"""Longest pattern (in atoms, anchors and repeats) run on ``re``; see ``_backtracks_linearly``."""

FAST_PATH_MAX_SKIPPED = 2
"""Most anchors and optional repeats between a repeat and what must follow it, on ``re``."""

FAST_PATH_MAX_NAME = 64
"""Longest name given to ``re``; longer ones go to the DFA. ``re``'s work is quadratic in the
name (see ``_backtracks_linearly``): on 64 characters its worst case stays near the DFA's
(tens of microseconds, ``bench/regex_safety.py``), on 256 it would be ~100x the DFA's. Real
names (``user:alice123``) are far shorter."""

FINITE_SET_MAX = 4096
"""A character class with at most this many members is enumerated for the disjointness test."""

_MAXREPEAT: Final = _c.MAXREPEAT
_CHAR_OPS: Final = frozenset({_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN})
_REPEAT_OPS: Final = frozenset({_c.MAX_REPEAT, _c.MIN_REPEAT})
_DEFAULT_FLAGS: Final = _c.SRE_FLAG_UNICODE  # what the parser reports for a str pattern

# NFA node kinds.
_CHAR, _SPLIT, _ASSERT, _MATCH = range(4)

# Zero-width assertions, evaluated from the position's context.
_A_START, _A_DOLLAR, _A_END, _A_BOUNDARY, _A_NOT_BOUNDARY = range(5)
_ASSERTIONS: Final = {
    _c.AT_BEGINNING: _A_START,  # '^': without MULTILINE, only at position 0
    _c.AT_BEGINNING_STRING: _A_START,  # '\A'
    _c.AT_END: _A_DOLLAR,  # '$': at the end, or before a '\n' that ends the name
    _c.AT_END_STRING: _A_END,  # '\Z'
    _c.AT_BOUNDARY: _A_BOUNDARY,  # '\b'
    _c.AT_NON_BOUNDARY: _A_NOT_BOUNDARY,  # '\B'
}

# sre refuses both \b and \B on an empty string (so in 3.11); ask this Python, not the docs.
_BOUNDARY_ON_EMPTY: Final = re.search(r"\b", "") is not None
_NON_BOUNDARY_ON_EMPTY: Final = re.search(r"\B", "") is not None

_LAST_NEWLINE: Final = "\n$"
"""Transition key for a '\\n' that ends the name (where '$' holds); no character equals it."""

_REFUSED: Final = {
    _c.GROUPREF: "backreferences are not supported",
    _c.GROUPREF_EXISTS: "conditionals (?(...)...) are not supported",
    _c.ASSERT: "lookahead and lookbehind assertions are not supported",
    _c.ASSERT_NOT: "lookahead and lookbehind assertions are not supported",
    _c.ATOMIC_GROUP: "atomic groups are not supported",
    _c.POSSESSIVE_REPEAT: "possessive repeats are not supported",
}


def _is_word(ch: str) -> bool:
    # sre's Unicode word character (SRE_UNI_IS_WORD): alphanumeric or underscore.
    return ch.isalnum() or ch == "_"


_CATEGORIES: Final[dict[Any, Callable[[str], bool]]] = {
    # A str pattern uses the Unicode categories: \d is Py_UNICODE_ISDECIMAL, \s ISSPACE.
    _c.CATEGORY_DIGIT: str.isdecimal,
    _c.CATEGORY_NOT_DIGIT: lambda ch: not ch.isdecimal(),
    _c.CATEGORY_SPACE: str.isspace,
    _c.CATEGORY_NOT_SPACE: lambda ch: not ch.isspace(),
    _c.CATEGORY_WORD: _is_word,
    _c.CATEGORY_NOT_WORD: lambda ch: not _is_word(ch),
}


class _Refused(Exception):
    """The pattern is valid for ``re`` but outside the subset (or over a size bound)."""


class CharClass:
    """The characters one NFA step accepts: literals, ranges and categories, maybe negated."""

    __slots__ = ("categories", "chars", "negated", "ranges")

    def __init__(self, chars: Iterable[str] = (), ranges: Sequence[tuple[int, int]] = (),
                 categories: Sequence[Callable[[str], bool]] = (), *,
                 negated: bool = False) -> None:
        self.chars = frozenset(chars)
        self.ranges = tuple(ranges)
        self.categories = tuple(categories)
        self.negated = negated

    def __contains__(self, ch: str) -> bool:
        code = ord(ch)
        found = (ch in self.chars or any(lo <= code <= hi for lo, hi in self.ranges)
                 or any(test(ch) for test in self.categories))
        return found != self.negated

    def finite(self) -> frozenset[str] | None:
        """Every member, when there are at most ``FINITE_SET_MAX``; None otherwise."""
        if self.negated or self.categories:
            return None
        size = len(self.chars) + sum(hi - lo + 1 for lo, hi in self.ranges)
        if size > FINITE_SET_MAX:
            return None
        members = set(self.chars)
        for lo, hi in self.ranges:
            members.update(chr(code) for code in range(lo, hi + 1))
        return frozenset(members)

    def may_intersect(self, other: CharClass) -> bool:
        """False only if no character is in both (exact for small classes, else True)."""
        mine = self.finite()
        if mine is not None:
            return any(ch in other for ch in mine)
        theirs = other.finite()
        if theirs is not None:
            return any(ch in self for ch in theirs)
        return True


def _char_class(op: Any, av: Any) -> CharClass:
    if op is _c.LITERAL:
        return CharClass(chr(av))
    if op is _c.NOT_LITERAL:
        return CharClass(chr(av), negated=True)
    if op is _c.ANY:
        return CharClass("\n", negated=True)  # '.' without DOTALL
    chars: list[str] = []
    ranges: list[tuple[int, int]] = []
    categories: list[Callable[[str], bool]] = []
    negated = False
    for item_op, item_av in av:
        if item_op is _c.NEGATE:
            negated = True
        elif item_op is _c.LITERAL:
            chars.append(chr(item_av))
        elif item_op is _c.RANGE:
            lo, hi = item_av
            ranges.append((int(lo), int(hi)))
        elif item_op is _c.CATEGORY and item_av in _CATEGORIES:
            categories.append(_CATEGORIES[item_av])
        else:
            raise _Refused(f"unsupported item {item_op} in a character class")
    return CharClass(chars, ranges, categories, negated=negated)


def _parse_re(source: str) -> Any:
    """``re``'s own parse tree of ``source`` (a ``re.error`` if ``re`` refuses it)."""
    return _p.parse(source)


_Class = frozenset[str] | CharClass
"""What one NFA step accepts: a small class is a frozenset, so ``in`` runs in C."""

_NOTHING: Final[frozenset[str]] = frozenset()


# --- the NFA ------------------------------------------------------------------------------------

class _Nfa:
    """A Thompson NFA in parallel lists, built from ``re``'s parse tree back to front."""

    def __init__(self, tree: Any) -> None:
        self.kinds: list[int] = []
        self.classes: list[_Class] = []
        self.outs: list[list[int]] = []
        self.assertions: list[int] = []
        self.uses_boundary = False
        self.uses_dollar = False
        self._class_of: dict[tuple[Any, Any], _Class] = {}
        self._steps = 0
        match = self._add(_MATCH, None, [], -1)
        self.start = self._sequence(tree, match, 0)

    def _add(self, kind: int, cls: _Class | None, outs: list[int],
             assertion: int) -> int:
        if len(self.kinds) >= MAX_NFA_STATES:
            raise _Refused(f"it expands to more than {MAX_NFA_STATES} states (counted repeats?)")
        self.kinds.append(kind)
        self.classes.append(_NOTHING if cls is None else cls)
        self.outs.append(outs)
        self.assertions.append(assertion)
        return len(self.kinds) - 1

    def _sequence(self, items: Any, after: int, depth: int) -> int:
        if depth > MAX_NESTING:
            raise _Refused(f"groups nested deeper than {MAX_NESTING}")
        for op, av in reversed(list(items)):
            after = self._item(op, av, after, depth)
        return after

    def _item(self, op: Any, av: Any, after: int, depth: int) -> int:
        self._steps += 1
        if self._steps > MAX_COMPILE_STEPS:
            raise _Refused(f"compiling it takes more than {MAX_COMPILE_STEPS} steps "
                           f"(counted repeats of empty items?)")
        if op in _CHAR_OPS:
            # One object per distinct class (a counted repeat copies its body): the DFA tests
            # each new character once per distinct class, not once per state.
            key = (op, tuple(av) if op is _c.IN else av)
            known = self._class_of.get(key)
            if known is None:
                char_class = _char_class(op, av)
                finite = char_class.finite()
                # A small class as a frozenset: the membership test runs in C.
                known = finite if finite is not None and len(finite) <= 256 else char_class
                self._class_of[key] = known
            return self._add(_CHAR, known, [after], -1)
        if op is _c.AT:
            if av not in _ASSERTIONS:
                raise _Refused(f"unsupported anchor {av}")
            kind = _ASSERTIONS[av]
            self.uses_boundary |= kind in (_A_BOUNDARY, _A_NOT_BOUNDARY)
            self.uses_dollar |= kind == _A_DOLLAR
            return self._add(_ASSERT, None, [after], kind)
        if op is _c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise _Refused("inline flags are not supported")
            return self._sequence(sub, after, depth + 1)
        if op is _c.BRANCH:
            _, alternatives = av
            starts = [self._sequence(alt, after, depth + 1) for alt in alternatives]
            return self._add(_SPLIT, None, starts, -1)
        if op in _REPEAT_OPS:
            # Greedy and lazy select the same names: a search only asks whether a match exists.
            return self._repeat(int(av[0]), av[1], av[2], after, depth)
        raise _Refused(_REFUSED.get(op, f"unsupported construct {op}"))

    def _repeat(self, lo: int, hi: Any, body: Any, after: int, depth: int) -> int:
        if _adds_nothing(body):
            return after  # an empty group repeated is empty (and must not loop 4e9 times)
        unbounded = hi is _MAXREPEAT
        if lo > MAX_NFA_STATES or (not unbounded and int(hi) - lo > MAX_NFA_STATES):
            raise _Refused(f"it expands to more than {MAX_NFA_STATES} states (counted repeats?)")
        if unbounded:
            start = self._add(_SPLIT, None, [], -1)
            self.outs[start].extend((self._sequence(body, start, depth + 1), after))
        else:
            # x{0,k} as k optional copies: x?x?...x? matches the same strings.
            start = after
            for _ in range(int(hi) - lo):
                copy = self._sequence(body, start, depth + 1)
                start = self._add(_SPLIT, None, [copy, start], -1)
        for _ in range(lo):
            start = self._sequence(body, start, depth + 1)
        return start


def _adds_nothing(items: Any) -> bool:
    """Whether a parsed sequence is only (nested) empty groups."""
    return all(op is _c.SUBPATTERN and _adds_nothing(av[3]) for op, av in items)


# --- the lazy DFA -------------------------------------------------------------------------------

class CacheBudget:
    """Memory shared by the DFA caches of many patterns (one per ``Router``).

    When the estimate passes ``limit_bytes``, every cache that draws on it is dropped at once
    (a walk in progress keeps only the states it holds until it returns), so together they
    stay under the limit however many patterns are compiled or how long they sit idle.
    """

    def __init__(self, limit_bytes: int = DFA_CACHE_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.resets = 0
        """How many times the budget was spent and every cache dropped."""
        self._caches: weakref.WeakSet[_LazyDfa] = weakref.WeakSet()

    def add(self, cache: _LazyDfa) -> None:
        """Let ``cache`` draw on this budget (until it is garbage)."""
        self._caches.add(cache)

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` more; past the limit, drop every cache."""
        self.used_bytes += nbytes
        if self.used_bytes > self.limit_bytes:
            self.used_bytes = 0
            self.resets += 1
            for cache in list(self._caches):
                cache.clear()


class _DState:
    """A DFA state: the NFA states alive before the closure at one position (a bit set), and
    what the assertions need to know of the character before it."""

    __slots__ = ("at_end", "at_start", "kernel", "next", "prev_word")

    def __init__(self, kernel: int, prev_word: bool, at_start: bool) -> None:
        self.kernel = kernel
        self.prev_word = prev_word
        self.at_start = at_start
        self.next: dict[str, _DState] = {}
        self.at_end: bool | None = None


# The two ends of a walk; every other state holds at least the start state, so kernel > 0.
_MATCHED: Final = _DState(0, False, False)
_DEAD: Final = _DState(-1, False, False)

# What the assertions can see of one position, as bits of a small int.
_AT_START, _PREV_WORD, _NEXT_WORD, _AT_END, _DOLLAR_HOLDS = 1, 2, 4, 8, 16

# Rough CPython sizes, to charge the budget (a state, a dict slot, a table entry).
_STATE_BYTES, _ENTRY_BYTES = 200, 80


class _LazyDfa:
    """Searches names with the subset construction over bit sets of NFA states, built on
    demand, with a bounded cache.

    One step from kernel K on character ch: C = closure(K) in the position's context, a match
    if the match state is in C, else K' = successors(C & accepting(ch)) plus the start state.
    closure and successors are ORs of per-state bit sets, looked up a byte of K at a time in
    lazily filled tables: a step costs O(NFA size / 8) big-int operations, whatever the
    pattern, and a cached step one dict lookup.
    """

    def __init__(self, nfa: _Nfa, budget: CacheBudget) -> None:
        self._nfa = nfa
        self._budget = budget
        n = len(nfa.kinds)
        self._nbytes = (n + 7) // 8
        self._start_bit = 1 << nfa.start
        self._match_bit = 1 << 0  # the match state is built first
        self._char_bits = [1 << s if kind == _CHAR else 0 for s, kind in enumerate(nfa.kinds)]
        self._succ_bits = [1 << outs[0] if kind == _CHAR else 0
                           for kind, outs in zip(nfa.kinds, nfa.outs, strict=True)]
        # Which states each distinct class (and each literal character) lets through.
        self._literal_bits: dict[str, int] = {}
        self._class_bits: dict[int, tuple[_Class, int]] = {}
        for s, kind in enumerate(nfa.kinds):
            if kind != _CHAR:
                continue
            cls = nfa.classes[s]
            if isinstance(cls, frozenset) and len(cls) == 1:
                [ch] = cls
                self._literal_bits[ch] = self._literal_bits.get(ch, 0) | 1 << s
            else:
                _, bits = self._class_bits.get(id(cls), (cls, 0))
                self._class_bits[id(cls)] = (cls, bits | 1 << s)
        # Only the context bits some assertion reads: fewer distinct closures.
        used = {a for kind, a in zip(nfa.kinds, nfa.assertions, strict=True) if kind == _ASSERT}
        mask = 0
        if _A_START in used:
            mask |= _AT_START
        if _A_DOLLAR in used:
            mask |= _DOLLAR_HOLDS
        if _A_END in used:
            mask |= _AT_END
        if used & {_A_BOUNDARY, _A_NOT_BOUNDARY}:
            mask |= _AT_START | _PREV_WORD | _NEXT_WORD | _AT_END
        self._mask = mask
        # Past position 0 the start state may be unable to do anything ('^...'): then, once no
        # other NFA state is alive, no match can come and the search stops.
        self._start_dead_later = not self._may_live(nfa.start)
        self.resets = -1
        """How many times this cache was dropped (for tests and benchmarks)."""
        self.clear()
        budget.add(self)

    def clear(self) -> None:
        """Drop everything cached (the budget's call); it is rebuilt as walks need it."""
        self._closures: dict[int, list[int]] = {}  # context -> closure of each NFA state
        self._closure_table: dict[int, int] = {}  # context, byte index, byte -> closure bits
        self._succ_table: dict[int, int] = {}  # byte index, byte -> successor bits
        self._accepting: dict[str, int] = {}  # character -> char states that accept it
        initial = _DState(self._start_bit, False, True)  # charged to no one: tiny
        self._states = {(self._start_bit, False, True): initial}
        self._initial = initial
        self.resets += 1

    def _charge(self, nbytes: int) -> None:
        self._budget.charge(nbytes)

    def select(self, names: Iterable[str]) -> list[str]:
        """The names that match, in order."""
        search = self.search
        return [name for name in names if search(name)]

    def search(self, name: str) -> bool:
        """Whether ``re.search`` would find a match in ``name``."""
        state = self._initial
        if self._nfa.uses_dollar and name.endswith("\n"):
            return self._walk_to_final_newline(state, name)
        for ch in name:
            try:
                state = state.next[ch]
            except KeyError:
                state = self._step(state, ch, ch, last=False)
            if state.kernel <= 0:  # matched or dead: the rest of the name cannot matter
                return state is _MATCHED
        at_end = state.at_end
        if at_end is None:
            at_end = self._at_end(state)
        return at_end

    def _walk_to_final_newline(self, state: _DState, name: str) -> bool:
        """``search`` for a name that ends with '\\n' when the pattern has '$' (which holds
        before that '\\n' too): the last step has a transition key of its own."""
        for ch in name[:-1]:
            nxt = state.next.get(ch)
            state = self._step(state, ch, ch, last=False) if nxt is None else nxt
            if state.kernel <= 0:
                return state is _MATCHED
        nxt = state.next.get(_LAST_NEWLINE)
        state = self._step(state, _LAST_NEWLINE, "\n", last=True) if nxt is None else nxt
        if state.kernel <= 0:
            return state is _MATCHED
        at_end = state.at_end
        if at_end is None:
            at_end = self._at_end(state)
        return at_end

    def _at_end(self, state: _DState) -> bool:
        closure = self._closure(state.kernel, self._context(state, None, last=True))
        state.at_end = bool(closure & self._match_bit)
        return state.at_end

    def _context(self, state: _DState, ch: str | None, *, last: bool) -> int:
        context = _PREV_WORD if state.prev_word else 0
        if state.at_start:
            context |= _AT_START
        if ch is None:
            context |= _AT_END | _DOLLAR_HOLDS
        else:
            if _is_word(ch):
                context |= _NEXT_WORD
            if last:  # the '\n' that ends the name: '$' holds before it
                context |= _DOLLAR_HOLDS
        return context & self._mask

    def _step(self, state: _DState, key: str, ch: str, *, last: bool) -> _DState:
        closure = self._closure(state.kernel, self._context(state, ch, last=last))
        if closure & self._match_bit:
            nxt = _MATCHED
        else:
            accepting = self._accepting.get(ch)
            if accepting is None:
                accepting = self._accepting_bits(ch)
            kernel = self._successors(closure & accepting)
            if not kernel and self._start_dead_later:
                nxt = _DEAD
            else:
                word = bool(self._mask & _PREV_WORD) and _is_word(ch)
                # a match may also start at the next position: the start state is always in
                nxt = self._state(kernel | self._start_bit, word, False)
        state.next[key] = nxt
        self._charge(_ENTRY_BYTES)
        return nxt

    def _state(self, kernel: int, prev_word: bool, at_start: bool) -> _DState:
        key = (kernel, prev_word, at_start)
        state = self._states.get(key)
        if state is None:
            state = _DState(kernel, prev_word, at_start)
            self._states[key] = state
            self._charge(_STATE_BYTES + self._nbytes)
        return state

    def _accepting_bits(self, ch: str) -> int:
        bits = self._literal_bits.get(ch, 0)
        for cls, class_bits in self._class_bits.values():
            if ch in cls:
                bits |= class_bits
        self._accepting[ch] = bits
        self._charge(_ENTRY_BYTES + self._nbytes)
        return bits

    def _closure(self, kernel: int, context: int) -> int:
        """The char-consuming (and match) states reachable from ``kernel`` without consuming."""
        table = self._closure_table
        result = 0
        base = context << 32
        for index, byte in _bytes_of(kernel):
            if byte:
                key = base | index << 8 | byte
                bits = table.get(key)
                if bits is None:
                    per_state = self._closures.get(context)
                    if per_state is None:
                        per_state = self._state_closures(context)
                    bits = 0
                    for i in range(8):
                        if byte >> i & 1:
                            bits |= per_state[index * 8 + i]
                    table[key] = bits
                    self._charge(_ENTRY_BYTES + self._nbytes)
                result |= bits
        return result

    def _successors(self, chars: int) -> int:
        """Where the char states in ``chars`` lead after consuming their character."""
        table = self._succ_table
        succ_bits = self._succ_bits
        result = 0
        for index, byte in _bytes_of(chars):
            if byte:
                key = index << 8 | byte
                bits = table.get(key)
                if bits is None:
                    bits = 0
                    for i in range(8):
                        if byte >> i & 1:
                            bits |= succ_bits[index * 8 + i]
                    table[key] = bits
                    self._charge(_ENTRY_BYTES + self._nbytes)
                result |= bits
        return result

    def _state_closures(self, context: int) -> list[int]:
        """For each NFA state, the char and match states its epsilon moves reach in this
        context: Tarjan's strongly connected components, so a cycle of epsilon moves
        ('(a*)*') costs no more than a chain (O(states + moves) big-int ORs)."""
        nfa = self._nfa
        n = len(nfa.kinds)
        moves: list[list[int]] = []
        for s in range(n):
            kind = nfa.kinds[s]
            if kind == _SPLIT or (kind == _ASSERT and _holds(nfa.assertions[s], context)):
                moves.append(nfa.outs[s])
            else:
                moves.append([])
        own = [self._char_bits[s] for s in range(n)]
        own[0] = self._match_bit
        closure = [0] * n
        index = [-1] * n
        low = [0] * n
        on_stack = [False] * n
        stack: list[int] = []
        counter = 0
        for root in range(n):
            if index[root] != -1:
                continue
            work = [(root, 0)]
            while work:
                v, i = work[-1]
                if i == 0:
                    index[v] = low[v] = counter
                    counter += 1
                    stack.append(v)
                    on_stack[v] = True
                if i < len(moves[v]):
                    work[-1] = (v, i + 1)
                    w = moves[v][i]
                    if index[w] == -1:
                        work.append((w, 0))
                    elif on_stack[w]:
                        low[v] = min(low[v], index[w])
                    continue
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
                if low[v] == index[v]:  # v roots a component: every successor one is done
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        component.append(w)
                        if w == v:
                            break
                    members = set(component)
                    bits = 0
                    for u in component:
                        bits |= own[u]
                        for w in moves[u]:
                            if w not in members:
                                bits |= closure[w]
                    for u in component:
                        closure[u] = bits
        self._closures[context] = closure
        self._charge(n * (_ENTRY_BYTES + self._nbytes))
        return closure

    def _may_live(self, start: int) -> bool:
        """Whether ``start`` can consume or match at some position past 0 (every assertion but
        the start anchors taken to hold: an over-estimate)."""
        nfa = self._nfa
        seen: set[int] = set()
        stack = [start]
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            kind = nfa.kinds[s]
            if kind in (_CHAR, _MATCH):
                return True
            if kind == _SPLIT:
                stack.extend(nfa.outs[s])
            elif nfa.assertions[s] != _A_START:
                stack.append(nfa.outs[s][0])
        return False


def _bytes_of(bits: int) -> Iterable[tuple[int, int]]:
    """(byte index, byte) from the lowest to the highest non-zero byte of ``bits``: alive
    states often sit in one stretch of a large NFA, and zero bytes outside it cost nothing."""
    if not bits:
        return ()
    low = ((bits & -bits).bit_length() - 1) >> 3
    window = bits >> (low << 3)
    return enumerate(window.to_bytes((window.bit_length() + 7) >> 3, "little"), low)


def _holds(assertion: int, context: int) -> bool:
    """Whether a zero-width assertion holds at a position with this context."""
    if assertion == _A_START:
        return bool(context & _AT_START)
    if assertion == _A_DOLLAR:
        return bool(context & _DOLLAR_HOLDS)
    if assertion == _A_END:
        return bool(context & _AT_END)
    if context & _AT_START and context & _AT_END:  # the empty string: as sre does
        return _BOUNDARY_ON_EMPTY if assertion == _A_BOUNDARY else _NON_BOUNDARY_ON_EMPTY
    boundary = bool(context & _PREV_WORD) != bool(context & _NEXT_WORD)
    return boundary == (assertion == _A_BOUNDARY)


# --- when ``re`` itself is safe -----------------------------------------------------------------

_Flat = tuple[str, int, int, CharClass | None]
"""One item of a flat pattern: ("char", 1, 1, class), ("anchor", 0, 0, None) or
("repeat", lo, hi, class) for a repeat of one character class (hi -1: unbounded)."""


def _flatten(items: Any, out: list[_Flat]) -> bool:
    """Append ``items`` to ``out`` as flat items; False if they are not flat (a branch, or a
    repeat of anything but one character class)."""
    for op, av in items:
        if op in _CHAR_OPS:
            out.append(("char", 1, 1, _char_class(op, av)))
        elif op is _c.AT:
            out.append(("anchor", 0, 0, None))
        elif op is _c.SUBPATTERN:
            if not _flatten(av[3], out):
                return False
        elif op in _REPEAT_OPS:
            lo, hi, body = av
            inner: list[_Flat] = []
            if not _flatten(body, inner) or len(inner) != 1 or inner[0][0] != "char":
                return False
            out.append(("repeat", int(lo), -1 if hi is _MAXREPEAT else int(hi), inner[0][3]))
        else:
            return False
    return True


def _backtracks_linearly(tree: Any) -> bool:
    """Whether ``re`` may run this pattern: its backtracking is provably short.

    Accepted: a flat sequence (no ``|`` left after ``re``'s parser folded single characters
    into classes, groups only around it) of at most ``FAST_PATH_MAX_ITEMS`` items, each a
    character class, an anchor, or a repeat of one character class; and every repeat R with a
    choice (lo < hi) is *followed by disjoint classes*: no character of R's class is in the
    class of any item after R up to and including the first one that must consume (lo >= 1),
    with at most ``FAST_PATH_MAX_SKIPPED`` anchors and optional repeats (lo = 0) in between.

    Proof that a search costs O(n * (n * (s + 2) + k)) steps, n the name length, k the item
    count, s the skip bound. Classes, anchors and fixed repeats match in at most one way, so
    the only choice points of the backtracking are how many characters each repeat R takes.
    Suppose R stops at a position q where the name's character s[q] is still in R's class (it
    could have taken more, or it hit hi). What follows R must then consume s[q] with the class
    of one of the items of the disjointness rule, which cannot, or pass every item zero-width
    to the end of the pattern (a match: the search stops). The optional repeats in between
    cannot take s[q] either (disjoint too), so such a stop ends, failing or matching, within
    s + 2 steps and reaches no other choice point. The only stop of R that can go on
    consuming is the one where R's run ends (s[q] not in R's class, or the name's end): one
    deep path through the pattern, at most n + k steps. Along it each repeat tries at most
    run + 1 stops, and the runs are consecutive, disjoint stretches of the name: at most
    n * (s + 2) + n + k steps per start position, and re tries n + 1 of them.
    """
    items: list[_Flat] = []
    if not _flatten(tree, items) or len(items) > FAST_PATH_MAX_ITEMS:
        return False
    for i, (kind, lo, hi, cls) in enumerate(items):
        if kind != "repeat" or lo == hi:
            continue
        assert cls is not None
        for skipped, (later_kind, later_lo, _, later_cls) in enumerate(items[i + 1:]):
            if skipped > FAST_PATH_MAX_SKIPPED:  # every item before this one was skipped
                return False
            if later_kind == "anchor":
                continue
            assert later_cls is not None
            if cls.may_intersect(later_cls):
                return False
            if later_lo >= 1:
                break
    return True


# --- the public face ----------------------------------------------------------------------------

class Pattern:
    """A compiled REGEX target: ``search(name)`` is ``re.search(source, name) is not None``,
    in time linear in the name."""

    __slots__ = ("_dfa", "_re", "engine", "source")

    def __init__(self, source: str, dfa: _LazyDfa, fast: re.Pattern[str] | None) -> None:
        self.source = source
        self._dfa = dfa
        self._re = fast
        self.engine = "re" if fast is not None else "dfa"
        """Which engine runs names of up to ``FAST_PATH_MAX_NAME`` characters: "re" (proved
        to backtrack little) or "dfa"; longer names always go to the DFA."""

    def search(self, name: str) -> bool:
        """Whether the pattern matches anywhere in ``name``."""
        if self._re is not None and len(name) <= FAST_PATH_MAX_NAME:
            return self._re.search(name) is not None
        return self._dfa.search(name)

    def select(self, names: Iterable[str]) -> list[str]:
        """The names that match, in order."""
        if self._re is None:
            return self._dfa.select(names)
        search = self._re.search
        names = names if isinstance(names, list) else list(names)
        if max(map(len, names), default=0) <= FAST_PATH_MAX_NAME:  # the usual table
            return [name for name in names if search(name)]
        dfa_search = self._dfa.search
        return [name for name in names
                if (search(name) if len(name) <= FAST_PATH_MAX_NAME else dfa_search(name))]

    def __repr__(self) -> str:
        return f"<Pattern {self.source!r} on {self.engine}>"


def compile_pattern(source: str, *, fast_path: bool = True,
                    budget: CacheBudget | None = None) -> Pattern:
    """Compile a REGEX target; outside the supported subset, ``UsageError("bad REGEX
    pattern ...")``. The DFA's cache draws on ``budget`` (default: one of its own).
    ``fast_path=False`` always uses the DFA (for tests and benchmarks)."""
    try:
        compiled = re.compile(source)  # re's own verdict and error messages first
        tree = _parse_re(source)
    except (re.error, RecursionError, OverflowError) as exc:
        raise UsageError(f"bad REGEX pattern {source!r}: {exc}") from exc
    try:
        if tree.state.flags != _DEFAULT_FLAGS:
            raise _Refused("inline flags are not supported")
        nfa = _Nfa(tree)
        use_re = fast_path and _backtracks_linearly(tree)
    except _Refused as exc:
        raise UsageError(f"bad REGEX pattern {source!r}: {exc}") from None
    except RecursionError:
        raise UsageError(f"bad REGEX pattern {source!r}: nested too deeply") from None
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
        # re's parse tree is private API: a shape we do not know is refused, never guessed at.
        raise UsageError(f"bad REGEX pattern {source!r}: not understood on this Python "
                         f"({type(exc).__name__}: {exc})") from exc
    return Pattern(source, _LazyDfa(nfa, budget or CacheBudget()), compiled if use_re else None)
