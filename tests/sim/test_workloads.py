"""Workload generators are seeded, respect DESIGN.md section 7, and round-trip as traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from thunder_middleware.sim.trace import Trace, read_trace, write_trace
from thunder_middleware.sim.workloads import TOKEN_ID_HIGH, TOKEN_ID_LOW, workload


def test_same_seed_same_programs_other_seed_other_programs() -> None:
    first = workload("swe-agent", seed=3).programs(5)
    again = workload("swe-agent", seed=3).programs(5)
    other = workload("swe-agent", seed=4).programs(5)
    assert first == again
    assert [p.steps for p in first] != [p.steps for p in other]
    # program i does not depend on which programs were generated before it
    assert workload("swe-agent", seed=3).program(4) == first[4]


def test_swe_agent_respects_design_ranges() -> None:
    source = workload("swe-agent", seed=1)
    assert 3_000 <= len(source.system_prompt) <= 6_000
    programs = source.programs(40)
    contexts = [p.context_tokens(len(source.system_prompt)) for p in programs]
    assert max(contexts) <= 60_000 and max(contexts) >= 40_000
    assert all(len(p.steps) <= 60 for p in programs)
    assert sum(len(p.steps) >= 20 for p in programs) >= 30  # only context-capped ones stop early
    steps = [s for p in programs for s in p.steps]
    assert all(150 <= s.output_tokens <= 600 for s in steps)
    assert all(100 <= len(s.observation) <= 3_000 for s in steps)
    assert all(0.5 <= s.tool_duration_s <= 10 for s in steps)
    observations = sorted(len(s.observation) for s in steps)
    median, p99 = observations[len(steps) // 2], observations[len(steps) * 99 // 100]
    assert p99 > 3 * median  # heavy tail
    ids = {t for s in steps[:50] for t in s.observation}
    assert min(ids) >= TOKEN_ID_LOW and max(ids) < TOKEN_ID_HIGH


def test_openhands_and_router_ranges() -> None:
    openhands = workload("openhands", seed=0)
    assert 9_500 <= len(openhands.system_prompt) <= 10_500
    programs = openhands.programs(20)
    assert all(30 <= p.setup_s <= 50 and 9 <= p.disk_gb <= 11 for p in programs)
    assert all(1 <= s.tool_duration_s <= 30 for p in programs for s in p.steps)
    router = workload("router", seed=0).programs(60)
    assert all(5 <= len(p.steps) <= 15 for p in router)
    model_calls = [s.tool_duration_s for p in router for s in p.steps if s.tool == "model"]
    searches = [s.tool_duration_s for p in router for s in p.steps if s.tool == "search"]
    assert all(5 <= d <= 250 for d in model_calls) and max(model_calls) > 60
    assert all(1 <= d <= 60 for d in searches)


def test_programs_of_a_workload_share_only_the_system_prompt() -> None:
    a, b = workload("swe-agent", seed=0).programs(2)
    assert a.task != b.task
    assert a.steps[0].observation != b.steps[0].observation


def test_unknown_workload_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        workload("chatbot")


def test_trace_round_trips(tmp_path: Path) -> None:
    trace = Trace.from_workload(workload("router", seed=7), 6)
    path = tmp_path / "router.jsonl"
    write_trace(trace, path)
    assert len(path.read_text().splitlines()) == 7  # header + one line per program
    assert read_trace(path) == trace
    assert trace.program(6) is None and trace.program(5) == trace.programs[5]


def test_reading_a_foreign_file_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"format": "something-else"}\n')
    with pytest.raises(ValueError, match="not a thunder-trace"):
        read_trace(path)
