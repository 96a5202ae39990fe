"""The policies a fleet can be served with, all behind one interface the harness drives.

Every policy answers the same events with the same :data:`Decision` records the sidecar's
``ProgramScheduler`` emits (``Admit``/``Restore`` let a waiting request go to a backend), so
the harness has exactly one code path to apply them. Baselines admit at once (no gate); they
differ only in where each request goes:

- ``vllm``: each program is given a replica when it starts (round-robin over programs) and
  stays there: an agent fleet pointed at plain vLLM replicas, no scheduler.
- ``round-robin`` / ``least-loaded``: per-request routers (a plain load balancer, or one
  choosing the replica with the fewest running + waiting requests).
- ``session-affinity``: a consistent hash of the program id, what vLLM's production-stack
  router and LiteLLM's session affinity do.
- ``ttl-pinning``: Continuum: when a call ends in a tool call, its KV blocks stay pinned in
  the engine for a TTL equal to the mean observed duration of that tool, or until the
  program's next call arrives.
- ``ceiling``: ``vllm`` routing on replicas with unlimited KV (the no-thrashing bound), with
  environments prepared early like thunder's, so that it bounds every policy.
- ``thunder`` / ``thunder-published``: the real ``ProgramScheduler`` (cost-aware or as
  published), exactly the object the live sidecar runs.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from thunder_middleware.policy.types import Admit, CallTiming, Decision, Usage


@dataclass(frozen=True, slots=True)
class BackendSnapshot:
    """What a router could read from a replica's /metrics at this moment."""

    name: str
    capacity_tokens: int
    kv_usage: float
    num_running: int
    num_waiting: int


class SimPolicy:
    """Base policy: admits every request at once; subclasses choose the backend."""

    name = "base"
    #: engines get unlimited KV (the ceiling)
    unlimited_kv = False
    #: environments are prepared when a program registers, overlapping its first LLM call
    prepares_environments = False
    #: seconds between ``tick`` calls; None = never ticked
    tick_interval_s: float | None = None

    def start(self, backends: Sequence[BackendSnapshot], now: float) -> list[Decision]:
        self.backend_names = [b.name for b in backends]
        return []

    def route(self, program_id: str, backends: Sequence[BackendSnapshot]) -> str:
        raise NotImplementedError

    def on_request(
        self, program_id: str, now: float, prompt_tokens: int,
        backends: Sequence[BackendSnapshot],
    ) -> list[Decision]:
        return [Admit(program_id, self.route(program_id, backends))]

    def on_request_done(
        self, program_id: str, now: float, usage: Usage | None, timing: CallTiming | None
    ) -> list[Decision]:
        return []

    def on_release(self, program_id: str, now: float) -> list[Decision]:
        return []

    def on_metrics(self, now: float, backends: Sequence[BackendSnapshot]) -> list[Decision]:
        return []

    def tick(self, now: float) -> list[Decision]:
        return []

    # --- KV pinning (only TTL pinning uses these) ---
    def retains_blocks(self, program_id: str) -> bool:
        return False

    def retain_ttl_s(self, tool: str) -> float:
        return 0.0

    def on_tool_done(self, tool: str, duration_s: float) -> None:
        return None


class ProgramPinnedRouting(SimPolicy):
    """Plain vLLM: a program's replica is fixed when it starts (round-robin over programs)."""

    name = "vllm"

    def __init__(self) -> None:
        self._assigned: dict[str, str] = {}
        self._next = 0

    def route(self, program_id: str, backends: Sequence[BackendSnapshot]) -> str:
        backend = self._assigned.get(program_id)
        if backend is None:
            backend = self.backend_names[self._next % len(self.backend_names)]
            self._next += 1
            self._assigned[program_id] = backend
        return backend

    def on_release(self, program_id: str, now: float) -> list[Decision]:
        self._assigned.pop(program_id, None)
        return []


class RoundRobinRouting(SimPolicy):
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def route(self, program_id: str, backends: Sequence[BackendSnapshot]) -> str:
        backend = self.backend_names[self._next % len(self.backend_names)]
        self._next += 1
        return backend


class LeastLoadedRouting(SimPolicy):
    name = "least-loaded"

    def route(self, program_id: str, backends: Sequence[BackendSnapshot]) -> str:
        best = min(backends, key=lambda b: (b.num_running + b.num_waiting, b.kv_usage))
        return best.name


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class SessionAffinityRouting(SimPolicy):
    """A consistent-hash ring with virtual nodes, keyed by program id."""

    name = "session-affinity"
    virtual_nodes = 64

    def start(self, backends: Sequence[BackendSnapshot], now: float) -> list[Decision]:
        ring = sorted(
            (_hash64(f"{b.name}#{i}"), b.name) for b in backends for i in range(self.virtual_nodes)
        )
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]
        return super().start(backends, now)

    def route(self, program_id: str, backends: Sequence[BackendSnapshot]) -> str:
        index = bisect.bisect(self._points, _hash64(program_id)) % len(self._points)
        return self._owners[index]


@dataclass
class _ToolMean:
    total_s: float = 0.0
    count: int = 0


class TTLPinning(ProgramPinnedRouting):
    """Continuum: pin a tool-calling program's KV for the mean duration of that tool."""

    name = "ttl-pinning"
    #: TTL used for a tool never seen before (Continuum's conservative start)
    default_ttl_s = 2.0

    def __init__(self) -> None:
        super().__init__()
        self._tools: dict[str, _ToolMean] = {}

    def retains_blocks(self, program_id: str) -> bool:
        return True

    def retain_ttl_s(self, tool: str) -> float:
        stats = self._tools.get(tool)
        return stats.total_s / stats.count if stats and stats.count else self.default_ttl_s

    def on_tool_done(self, tool: str, duration_s: float) -> None:
        stats = self._tools.setdefault(tool, _ToolMean())
        stats.total_s += duration_s
        stats.count += 1


class CeilingRouting(ProgramPinnedRouting):
    """Plain vLLM routing on replicas with unlimited KV: nothing is ever evicted."""

    name = "ceiling"
    unlimited_kv = True
    prepares_environments = True  # an upper bound must not lose on environment waits


CACHE_FIRST: dict[str, Any] = {"decay_tool_halflives": 8.0, "lambda_min": 0.8}


@dataclass
class ThunderPolicy(SimPolicy):
    """The live sidecar's ``ProgramScheduler``, driven by simulated events."""

    cost_aware: bool = True
    config_overrides: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    prepares_environments = True

    def __post_init__(self) -> None:
        from thunder_middleware.policy import PolicyConfig, ProgramScheduler

        self.config = PolicyConfig(cost_aware=self.cost_aware, **self.config_overrides)
        self.scheduler = ProgramScheduler(self.config)
        self.name = self.name or ("thunder" if self.cost_aware else "thunder-published")
        self.tick_interval_s = float(self.config.tick_interval_s)

    def start(self, backends: Sequence[BackendSnapshot], now: float) -> list[Decision]:
        super().start(backends, now)
        decisions: list[Decision] = []
        for backend in backends:
            decisions += self.scheduler.add_backend(backend.name, backend.capacity_tokens, now)
        return decisions

    def on_request(
        self, program_id: str, now: float, prompt_tokens: int,
        backends: Sequence[BackendSnapshot],
    ) -> list[Decision]:
        # The live sidecar estimates chars from the payload; token-id prompts give the exact
        # count, which is what it passes as the hint.
        return self.scheduler.on_request(
            program_id, now, prompt_chars=4 * prompt_tokens, prompt_tokens_hint=prompt_tokens
        )

    def on_request_done(
        self, program_id: str, now: float, usage: Usage | None, timing: CallTiming | None
    ) -> list[Decision]:
        return self.scheduler.on_request_done(program_id, now, usage, timing)

    def on_release(self, program_id: str, now: float) -> list[Decision]:
        return self.scheduler.on_release(program_id, now)

    def on_metrics(self, now: float, backends: Sequence[BackendSnapshot]) -> list[Decision]:
        decisions: list[Decision] = []
        for backend in backends:
            decisions += self.scheduler.update_backend(
                backend.name, now, kv_usage=backend.kv_usage
            )
        return decisions

    def tick(self, now: float) -> list[Decision]:
        return self.scheduler.tick(now)


POLICIES: dict[str, Callable[[], SimPolicy]] = {
    "vllm": ProgramPinnedRouting,
    "round-robin": RoundRobinRouting,
    "least-loaded": LeastLoadedRouting,
    "session-affinity": SessionAffinityRouting,
    "ttl-pinning": TTLPinning,
    "ceiling": CeilingRouting,
    "thunder": lambda: ThunderPolicy(cost_aware=True),
    "thunder-published": lambda: ThunderPolicy(cost_aware=False),
    # the gate alone, without the self-check against pass-through
    "thunder-gate": lambda: ThunderPolicy(
        config_overrides={"self_check": False}, name="thunder-gate"),
    # the sidecar's --tool-halflives 8 --lambda-min 0.8: caches kept through longer tools,
    # restores batched below 80 % (fewer re-prefills, a smaller resident set)
    "thunder-cache-first": lambda: ThunderPolicy(
        cost_aware=True, config_overrides=CACHE_FIRST, name="thunder-cache-first"),
}


def make_policy(name: str) -> SimPolicy:
    """A fresh policy object by name (each run needs its own: policies keep state)."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None
