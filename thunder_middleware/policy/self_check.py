"""Is gating paying? A measured check of the gate against pass-through, with hysteresis.

The gate trades waiting for cache hits: a held request costs its agent time now, a request
admitted beyond what fits costs re-prefill later. Which side wins depends on the engine,
the model, the tool times and the load, and a model of it (cost.py) can be wrong on engines
it never saw. So the scheduler also measures, and takes its answer from the measurement.

What is measured: the LLM side of an agent's step, ``L`` = time at the gate + time in the
call, averaged over the calls that *arrived* during an epoch (the mode in force when a
request arrives decides whether it waits, so its whole latency is charged to that mode,
however long it waits). Agents alternate an LLM side and a tool side, and the tool side
does not depend on the mode, so for a fleet of N closed-loop agents the steps per second
are N / (L + tool time): the mode with the smaller ``L`` has the higher throughput, and for
arrivals that are not closed loops it has the lower latency.

How it decides:

- It starts in ``pass`` (the gate admits everything, like plain vLLM behind a balancer). A
  user who sees no thrashing pays nothing.
- In ``pass`` it watches for the evidence that gating could pay: tokens of a program's own
  previous context that the engine no longer had (expected reuse minus cached tokens),
  priced as re-prefill seconds per call. When they are less than ``self_check_min_gain`` of
  an agent's whole step (LLM side and tool), gating cannot win by enough to be worth trying,
  and nothing is explored.
- Otherwise it runs a short exploration epoch in the other mode and, one epoch later (when
  the calls that arrived in it have completed), compares its ``L`` with the main-mode epoch
  just before it. Gating must be better by ``self_check_margin`` to become the main mode;
  pass-through, which cannot harm, only has to tie. Each time the main mode wins by more
  than the margin, exploration becomes half as frequent, a quarter after a clear win (up to
  ``self_check_max_backoff`` main epochs between explorations); a near tie is looked at
  again as soon as before.
- After a change of mode, the calls already in the engines finish under the old mode's
  load: arrivals are charged to no epoch until they have drained.

Epochs are counted in completed calls (``programs`` calls for a main epoch, half that for an
exploration, at least ``self_check_min_calls``), so the loop follows the fleet's own pace:
a fleet whose tools take 0.2 s and one whose tools take a minute need no time constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from thunder_middleware.policy.config import PolicyConfig


class GateMode(StrEnum):
    GATE = "gate"  # the program-aware policy: pause, hold, restore
    PASS = "pass"  # admit every request at once (placement still chooses the backend)


@dataclass(frozen=True, slots=True)
class ModeChange:
    """A change of the main mode, with the measurement that caused it."""

    at: float
    mode: GateMode
    reason: str


def _other(mode: GateMode) -> GateMode:
    return GateMode.PASS if mode is GateMode.GATE else GateMode.GATE


@dataclass(slots=True)
class _Epoch:
    """The calls that arrived during one epoch: their latencies are charged to its mode."""

    mode: GateMode
    latency_sum: float = 0.0
    done: int = 0
    pending: int = 0
    pending_arrivals: float = 0.0  # sum of the pending calls' arrival times

    def latency(self, now: float) -> float | None:
        """Mean LLM-side time per call; calls still pending count what they waited so far."""
        calls = self.done + self.pending
        if calls == 0:
            return None
        waited = self.pending * now - self.pending_arrivals
        return (self.latency_sum + waited) / calls


class GatingCheck:
    """The online comparison of gating and pass-through (pure: time is passed in).

    The scheduler reports each call's arrival (:meth:`arrive`, which returns the epoch it is
    charged to) and its end (:meth:`call_done` or :meth:`call_dropped`).
    """

    def __init__(self, config: PolicyConfig) -> None:
        self._config = config
        # the published policy (cost_aware off) is kept exactly: it never checks itself
        self.enabled = config.self_check and config.cost_aware
        self.main = GateMode.PASS if self.enabled else GateMode.GATE
        self.mode = self.main
        self._epochs: dict[int, _Epoch] = {0: _Epoch(self.mode)}
        self._current = 0
        self._completions = 0  # calls completed since the current epoch began
        self._warmup = 0  # completions to wait after a mode change before charging arrivals
        self._missed_s = 0.0  # re-prefill seconds of own context the engine had lost
        self._missed_tokens = 0.0
        self._expected_tokens = 0.0
        self._main_before: int | None = None  # the main epoch just before an exploration
        self._explored: int | None = None  # the exploration awaiting its decision
        self._explore_every = 1
        self._since_explore = 0
        self._epoch_start = 0.0
        self.estimated_gain: float | None = None  # L(pass) / L(gate); > 1: gating pays
        self.potential_gain = 0.0  # from the last pass epoch's evidence
        self.last_change: ModeChange | None = None
        self.epochs = 0

    # --- accounting ----------------------------------------------------------------------
    def arrive(self, now: float) -> int:
        """A call arrived at the gate; returns the epoch it is charged to (-1: none)."""
        if not self.enabled or self._warmup > 0:
            return -1
        epoch = self._epochs[self._current]
        epoch.pending += 1
        epoch.pending_arrivals += now
        return self._current

    def call_dropped(self, epoch_id: int, arrived_at: float) -> None:
        """A charged call ended without an answer (abandoned, released): it measures nothing."""
        epoch = self._epochs.get(epoch_id)
        if epoch is not None and epoch.pending > 0:
            epoch.pending -= 1
            epoch.pending_arrivals -= arrived_at

    def call_done(
        self, epoch_id: int, arrived_at: float, now: float,
        expected_reuse: float, cached_tokens: int, missed_s: float,
    ) -> None:
        """A call completed; in ``pass`` its lost own context is the evidence."""
        epoch = self._epochs.get(epoch_id)
        if epoch is not None and epoch.pending > 0:
            epoch.pending -= 1
            epoch.pending_arrivals -= arrived_at
            epoch.done += 1
            epoch.latency_sum += now - arrived_at
        if self._warmup > 0:
            # calls the last mode already sent are still draining: they measure that mode
            self._warmup -= 1
            return
        self._completions += 1
        if self.mode is GateMode.PASS and expected_reuse > 0.0:
            self._expected_tokens += expected_reuse
            self._missed_tokens += max(expected_reuse - cached_tokens, 0.0)
            self._missed_s += missed_s

    @property
    def miss_share(self) -> float:
        """Of the tokens programs could have reused this epoch, the share the engine lost."""
        if self._expected_tokens <= 0.0:
            return 0.0
        return self._missed_tokens / self._expected_tokens

    # --- epochs --------------------------------------------------------------------------
    def epoch_calls(self, programs: int) -> int:
        floor = self._config.self_check_min_calls
        if self.mode is self.main:
            return max(floor, programs)
        return max(floor, programs // 2)

    def epoch_due(self, programs: int) -> bool:
        """Have enough calls completed to close the epoch?"""
        return self.enabled and self._completions >= self.epoch_calls(programs)

    def end_epoch_if_due(self, now: float, programs: int, inflight: int, tool_s: float) -> bool:
        """Close the epoch when enough calls completed; True if the mode changed.

        ``inflight``: calls sent to engines right now; after a change of mode they finish
        under the old mode's load, so arrivals are charged only once they have drained.
        ``tool_s``: the learned mean tool time, the part of a step no mode can shorten.
        """
        if not self.epoch_due(programs):
            return False
        epoch = self._epochs[self._current]
        latency = epoch.latency(now) or 0.0
        if self.mode is GateMode.PASS:
            # Gating can give back at most the re-prefill of what the engine lost, and an
            # agent's step is that share shorter at best: priced against the whole step,
            # the tool included, since tools run whatever the gate does.
            calls = max(self._completions, 1)
            step = latency + max(tool_s, 0.0)
            self.potential_gain = self._missed_s / calls / step if step > 0.0 else 0.0
        before = self.mode
        self._decide(now)
        self.epochs += 1
        self._current += 1
        self._epochs[self._current] = _Epoch(self.mode)
        # keep the epochs a decision can still read: the last four
        for old in [e for e in self._epochs if e < self._current - 4]:
            del self._epochs[old]
        self._epoch_start = now
        self._completions = 0
        self._missed_s = self._missed_tokens = self._expected_tokens = 0.0
        if self.mode is not before:
            self._warmup = inflight
        return self.mode is not before

    def _score(self, epoch_id: int | None, now: float) -> float | None:
        epoch = self._epochs.get(epoch_id) if epoch_id is not None else None
        return epoch.latency(now) if epoch is not None else None

    def _decide(self, now: float) -> None:
        config = self._config
        if self.mode is not self.main:  # an exploration ended: decided after the next epoch,
            self._explored = self._current  # once most of its calls have completed
            self.mode = self.main
            return
        if self._explored is not None:
            self._compare(now)
            return
        self._since_explore += 1
        if self._since_explore < self._explore_every:
            return
        if self.main is GateMode.PASS and self.potential_gain < config.self_check_min_gain:
            return  # the engine lost too little of what programs reuse for gating to pay
        self._main_before = self._current
        self.mode = _other(self.main)

    def _compare(self, now: float) -> None:
        """The exploration against the main epoch before it: switch, or back off."""
        config = self._config
        # Both are read one epoch after the exploration ended, when the calls that arrived
        # in them have almost all completed (the epoch just ended has not: calls still held
        # at a gate would make it look faster than it is).
        explored = self._score(self._explored, now)
        base = self._score(self._main_before, now)
        self._explored = None
        self._since_explore = 0
        if explored is None or base is None:
            return
        gate, passed = (base, explored) if self.main is GateMode.GATE else (explored, base)
        self.estimated_gain = passed / gate if gate > 0.0 else None
        # gating must win by the margin; pass-through, which cannot harm, only by tying
        margin = config.self_check_margin if self.main is GateMode.PASS else 0.0
        if explored >= base * (1.0 - margin):
            # the main mode won: explore less often, much less after a clear win; a near tie
            # says little either way, and is looked at again as soon as before
            if explored > base * (1.0 + config.self_check_margin):
                clear = explored > base * (1.0 + 3.0 * config.self_check_margin)
                factor = 4 if clear else 2
                self._explore_every = min(self._explore_every * factor,
                                          config.self_check_max_backoff)
            return
        self.main = self.mode = _other(self.main)
        # a gate that just won gets two epochs to settle before it is questioned again;
        # pass-through is questioned at once, since it may only have tied
        self._explore_every = 2 if self.main is GateMode.GATE else 1
        self.last_change = ModeChange(
            now, self.main,
            f"{self.main} measured {explored:.3g} s per call on the LLM side against "
            f"{base:.3g} s in {_other(self.main)}",
        )
