"""Per-backend demand with the decay f(t) = x^-t, kept incrementally (DESIGN section 3).

    demand_b(now) = sum_{reasoning p on b} c_p + sum_{acting q on b} c_q * x^-(now - t_q)

The acting part factors as x^-(now - ref) * sum c_q * x^(t_q - ref), so adding or removing an
acting program is O(1) and reading the demand is O(1) however many programs a backend holds:
this is what keeps a tick at 10,000 programs cheap. The reference time is moved forward
(re-based) before x^(t_q - ref) can overflow, recomputing the sum exactly from the members so
that rounding from many add/remove pairs never accumulates.
"""

from __future__ import annotations

import math

from sortedcontainers import SortedList

# re-base once x^(now - ref) would exceed e^_REBASE_EXPONENT (~1e13): far from overflow, and
# the exact recomputation it triggers then costs O(members) only every ~43 s at x = 2
_REBASE_EXPONENT = 30.0


def decay(base: float, elapsed_s: float) -> float:
    """f(t) = x^-t; 1.0 for t <= 0 (a program that just started acting counts fully)."""
    if elapsed_s <= 0.0 or base == 1.0:
        return 1.0
    return base ** (-elapsed_s)


class DecayingSum:
    """sum of c_q * x^-(now - t_q) (and of x^-(now - t_q)) over a changing set, O(1) each.

    The second sum, the decayed *count*, is what the shared-prefix correction needs: every
    program that counts shares the system prompt, acting ones in proportion to f(t).
    """

    __slots__ = ("_count", "_ln_base", "_members", "_ref", "_scaled")

    def __init__(self, base: float, now: float = 0.0) -> None:
        self._ln_base = math.log(base)
        self._members: dict[str, tuple[float, float]] = {}
        self._ref = now
        self._scaled = 0.0  # sum c_q * x^(t_q - ref)
        self._count = 0.0  # sum x^(t_q - ref)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, key: object) -> bool:
        return key in self._members

    @property
    def base(self) -> float:
        return math.exp(self._ln_base)

    def _factor(self, since: float) -> float:
        return math.exp(self._ln_base * (since - self._ref))

    def _recompute(self, now: float) -> None:
        self._ref = now
        factors = [(c, self._factor(t)) for c, t in self._members.values()]
        self._scaled = math.fsum(c * f for c, f in factors)
        self._count = math.fsum(f for _, f in factors)

    def _maybe_rebase(self, now: float) -> None:
        if (now - self._ref) * self._ln_base > _REBASE_EXPONENT:
            self._recompute(now)

    def set_base(self, base: float, now: float) -> None:
        """Change x (the cost model adapts it to the learned tool time): O(members)."""
        self._ln_base = math.log(base)
        self._recompute(now)

    def add(self, key: str, c: float, since: float) -> None:
        self.discard(key)
        self._maybe_rebase(since)
        self._members[key] = (c, since)
        f = self._factor(since)
        self._scaled += c * f
        self._count += f

    def discard(self, key: str) -> None:
        entry = self._members.pop(key, None)
        if entry is None:
            return
        if not self._members:
            # reset exactly: no rounding residue survives an empty set
            self._scaled = self._count = 0.0
            return
        f = self._factor(entry[1])
        self._scaled -= entry[0] * f
        self._count -= f

    def value(self, now: float, shared: float = 0.0) -> float:
        """sum (c_q - shared) * f(now - t_q), never negative."""
        if not self._members:
            return 0.0
        self._maybe_rebase(now)
        total = (self._scaled - shared * self._count) * math.exp(-self._ln_base * (now - self._ref))
        return total if total > 0.0 else 0.0

    def count(self, now: float) -> float:
        """sum f(now - t_q): how many programs the acting ones amount to."""
        if not self._members:
            return 0.0
        self._maybe_rebase(now)
        total = self._count * math.exp(-self._ln_base * (now - self._ref))
        return total if total > 0.0 else 0.0

    def time_below(self, target: float, shared: float = 0.0) -> float:
        """Earliest time at which value(t, shared) < target with no further changes.

        -inf if it already is (or is empty and target > 0), +inf if it never will be.
        """
        scaled = self._scaled - shared * self._count
        if not self._members or scaled <= 0.0:
            return float("-inf") if target > 0.0 else float("inf")
        if target <= 0.0:
            return float("inf")
        if self._ln_base == 0.0:
            return float("-inf") if scaled < target else float("inf")
        return self._ref + math.log(scaled / target) / self._ln_base

    def get(self, key: str) -> tuple[float, float] | None:
        """(c, since) of a member."""
        return self._members.get(key)

    def contribution(self, key: str, now: float) -> float:
        """One member's current term, c * x^-(now - t)."""
        entry = self._members.get(key)
        if entry is None:
            return 0.0
        c, since = entry
        return c * math.exp(-self._ln_base * max(now - since, 0.0))

    def items(self) -> list[tuple[str, float, float]]:
        return [(key, c, since) for key, (c, since) in self._members.items()]


class BackendDemand:
    """What one backend is committed to: the reasoning sum, the decaying acting sum, marks.

    Marked programs (reasoning, to be paused when their call ends) still hold KV now but are
    already leaving, so the *committed* demand that the watermarks are compared with leaves
    them out; counting them would pause a second program for the same excess.

    Pause candidates are kept sorted by c (acting, and unmarked reasoning), so relieving an
    excess walks only the few smallest programs instead of sorting a backend's hundreds.
    """

    __slots__ = (
        "_acting_by_c",
        "_cached",
        "_marked",
        "_reasoning",
        "_reasoning_by_c",
        "acting",
        "marked_sum",
        "reasoning_sum",
        "version",
    )

    def __init__(self, base: float, now: float) -> None:
        self.acting = DecayingSum(base, now)
        self._reasoning: dict[str, float] = {}
        self._marked: set[str] = set()
        self._acting_by_c: SortedList = SortedList()
        self._reasoning_by_c: SortedList = SortedList()
        self.reasoning_sum = 0.0
        self.marked_sum = 0.0  # c of marked programs: leaving, but holding KV until done
        # (now, demand) of the last read: one event reads every backend's demand several
        # times at the same now; any mutation clears it
        self._cached: tuple[float, float, float] | None = None
        self.version = 0  # bumped by every mutation: lets readers cache derived values

    @property
    def reasoning_count(self) -> int:
        return len(self._reasoning) - len(self._marked)

    @property
    def marked_count(self) -> int:
        return len(self._marked)

    @property
    def unmarked_count(self) -> int:
        """Programs bound here that are not already on their way out."""
        return len(self._reasoning) - len(self._marked) + len(self.acting)

    def reasoning_ids(self) -> list[str]:
        """Every reasoning program bound here, marked ones included (they still hold KV)."""
        return list(self._reasoning)

    def members(self) -> list[str]:
        return [*self._reasoning, *(key for key, _, _ in self.acting.items())]

    def reasoning_items(self) -> list[tuple[str, float]]:
        return [(key, c) for key, c in self._reasoning.items() if key not in self._marked]

    def acting_by_c(self) -> SortedList:
        """(c, program) of the acting programs, smallest c first (read-only for callers)."""
        return self._acting_by_c

    def reasoning_by_c(self) -> SortedList:
        """(c, program) of the unmarked reasoning programs, smallest c first (read-only)."""
        return self._reasoning_by_c

    def set_reasoning(self, key: str, c: float) -> None:
        self._cached = None
        self.version += 1
        self._drop_acting(key)
        self._drop_reasoning(key)
        self._reasoning[key] = c
        self._reasoning_by_c.add((c, key))
        self.reasoning_sum += c

    def set_acting(self, key: str, c: float, since: float) -> None:
        self._cached = None
        self.version += 1
        self._drop_reasoning(key)
        self._drop_acting(key)
        self.acting.add(key, c, since)
        self._acting_by_c.add((c, key))

    def mark(self, key: str) -> None:
        self._cached = None
        self.version += 1
        c = self._reasoning.get(key)
        if c is not None and key not in self._marked:
            self._marked.add(key)
            self._reasoning_by_c.remove((c, key))
            self.reasoning_sum -= c
            self.marked_sum += c

    def set_decay_base(self, base: float, now: float) -> None:
        self._cached = None
        self.version += 1
        self.acting.set_base(base, now)

    def is_marked(self, key: str) -> bool:
        return key in self._marked

    def remove(self, key: str) -> None:
        self._cached = None
        self.version += 1
        self._drop_acting(key)
        self._drop_reasoning(key)

    def _drop_acting(self, key: str) -> None:
        entry = self.acting.get(key)
        if entry is not None:
            self._acting_by_c.remove((entry[0], key))
            self.acting.discard(key)

    def _drop_reasoning(self, key: str) -> None:
        c = self._reasoning.pop(key, None)
        if c is None:
            return
        if key in self._marked:
            self._marked.discard(key)
            self.marked_sum = self.marked_sum - c if self._marked else 0.0
        else:
            self._reasoning_by_c.remove((c, key))
            self.reasoning_sum -= c
        if not self._reasoning:
            self.reasoning_sum = 0.0

    def raw(self, now: float) -> float:
        """sum of c over reasoning programs + sum of c * f(t) over acting ones (DESIGN 3)."""
        return self.committed(now, 0.0)

    def committed(self, now: float, shared: float) -> float:
        """Demand when every program shares a ``shared``-token prefix held once.

        One copy of the prefix plus each program's own part: reasoning programs count
        c - shared, acting ones (c - shared) * f(t). With shared = 0 this is raw().
        """
        cached = self._cached
        if cached is not None and cached[0] == now and cached[1] == shared:
            return cached[2]
        counted = self.reasoning_count
        reasoning = self.reasoning_sum - shared * counted
        value = (reasoning if reasoning > 0.0 else 0.0) + self.acting.value(now, shared)
        if shared and (counted or len(self.acting)):
            value += shared
        self._cached = (now, shared, value)
        return value
