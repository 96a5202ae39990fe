"""`thunder-middleware trace save|show`, and sweeps replaying a saved trace."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks import sweeps
from thunder_middleware.cli import app
from thunder_middleware.sim.metrics import RunResult
from thunder_middleware.sim.sweep import RunSpec, run_one
from thunder_middleware.sim.trace import read_trace
from thunder_middleware.sim.workloads import workload

runner = CliRunner()


def save(tmp_path: Path, name: str = "swe-agent", programs: int = 4, seed: int = 3) -> Path:
    out = tmp_path / f"{name}.jsonl"
    result = runner.invoke(app, ["trace", "save", "--workload", name, "--programs",
                                 str(programs), "--seed", str(seed), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def comparable(result: RunResult) -> dict[str, object]:
    row = result.row()
    row.pop("cpu_s")
    return row


def test_save_writes_the_workload_and_summarizes_it_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    result = runner.invoke(app, ["trace", "save", "--workload", "router", "--programs", "5",
                                 "--seed", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    trace = read_trace(out)
    expected = workload("router", 2)
    assert trace.programs == tuple(expected.programs(5))
    assert trace.system_prompt == expected.system_prompt and trace.seed == 2
    steps = [s for p in trace.programs for s in p.steps]
    tokens = len(trace.system_prompt) + sum(
        len(p.task) + sum(s.output_tokens + len(s.observation) for s in p.steps)
        for p in trace.programs)
    mean_tool = statistics.fmean(s.tool_duration_s for s in steps)
    line = result.stdout.strip()
    assert "\n" not in line
    assert f"5 programs, {len(steps)} steps, {tokens:,} tokens, mean tool {mean_tool:.2f} s" \
        in line


def test_show_summarizes_what_save_wrote(tmp_path: Path) -> None:
    out = save(tmp_path, "router", programs=7, seed=1)
    result = runner.invoke(app, ["trace", "show", str(out)])
    assert result.exit_code == 0, result.output
    trace = read_trace(out)
    lengths = sorted(len(p.steps) for p in trace.programs)
    system = len(trace.system_prompt)
    peaks = [p.context_tokens(system) for p in trace.programs]
    text = result.stdout
    assert re.search(r"programs\s*│\s+7\s", text)
    assert f"{lengths[0]} / {statistics.median(lengths):g} / {lengths[-1]}" in text
    assert f"{statistics.median(peaks):,.0f} / {max(peaks):,} tokens" in text
    durations = [s.tool_duration_s for p in trace.programs for s in p.steps]
    assert f"{statistics.fmean(durations):.2f} / " in text
    for tool in {s.tool for p in trace.programs for s in p.steps}:
        calls = [s.tool_duration_s for p in trace.programs for s in p.steps if s.tool == tool]
        assert re.search(rf"{tool}\s*│\s+{len(calls)}\s*│.*{statistics.fmean(calls):.2f}", text)


def test_a_saved_trace_replays_like_its_workload(tmp_path: Path) -> None:
    out = save(tmp_path, "swe-agent", programs=4, seed=3)
    generated: dict[str, RunResult] = {}
    for policy in ("vllm", "thunder"):
        generated[policy] = run_one(RunSpec("swe-agent", policy, 4, steps_per_program=5, seed=3))
        replayed = run_one(RunSpec("swe-agent", policy, 4, steps_per_program=5, trace=out))
        assert replayed.steps == generated[policy].steps == 20
        assert replayed.hit_rate == generated[policy].hit_rate
        assert comparable(replayed) == comparable(generated[policy]), policy
    # the trace is really what was replayed: another seed's workload gives another run
    other = run_one(RunSpec("swe-agent", "vllm", 4, steps_per_program=5, seed=4))
    assert comparable(other) != comparable(generated["vllm"])


def test_sweeps_replay_a_trace_for_the_point_sweeps(tmp_path: Path) -> None:
    out = save(tmp_path, "router", programs=8, seed=0)
    results = sweeps.single_point("small", "swe-agent", [2], 3, tmp_path, "unused", out)
    assert {r.workload for r in results} == {"router"}
    assert all(r.steps == 6 for r in results)
    written = (tmp_path / "small_trace.md").read_text()
    assert "router.jsonl" in written and not (tmp_path / "small.md").exists()
    direct = run_one(RunSpec("router", "vllm", 2, steps_per_program=3, seed=0))
    assert comparable(next(r for r in results if r.policy == "vllm")) == comparable(direct)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["router", "--trace", "{trace}"], "applies to the headline and small sweeps only"),
        (["small", "--trace", "{missing}"], "cannot read the trace"),
    ],
)
def test_sweeps_reject_a_misused_trace(tmp_path: Path, argv: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    paths = {"trace": str(save(tmp_path, "router", 2)), "missing": str(tmp_path / "no.jsonl")}
    with pytest.raises(SystemExit) as exited:
        sweeps.main([arg.format(**paths) for arg in argv] + ["--out", str(tmp_path)])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


HEADER = json.dumps({"format": "thunder-trace/1", "workload": "x", "seed": 0,
                     "system_prompt": [1, 2]})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such trace file"),
        ("", "is empty, not a trace"),
        ("garbage\n", "not a trace (a line is not JSON"),
        ('{"format": "other/9"}\n', "not a thunder-trace/1 file"),
        ("[1, 2]\n", "not a trace ("),
        (HEADER + '\n{"program_id": "p"}\n', "lacks the field 'steps'"),
        (HEADER + '\n{"program_id": "p", "workload": "x", "task": [1], "setup_s": 1, '
         '"disk_gb": 1, "steps": [{"output_tokens": "many"}]}\n', "not a trace ("),
        (b"\xff\xfe\x00", "not a trace ("),
    ],
)
def test_show_rejects_bad_files_with_one_line(tmp_path: Path, content: str | bytes | None,
                                              message: str) -> None:
    path = tmp_path / "t.jsonl"
    if content is not None:
        _write(path, content)
    result = runner.invoke(app, ["trace", "show", str(path)])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_show_rejects_a_directory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["trace", "show", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workload", "nope", "--programs", "2"], "unknown workload 'nope'"),
        (["--workload", "router", "--programs", "0"], "--programs must be at least 1"),
    ],
)
def test_save_rejects_bad_input_with_one_line(tmp_path: Path, argv: list[str],
                                              message: str) -> None:
    out = tmp_path / "t.jsonl"
    result = runner.invoke(app, ["trace", "save", *argv, "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert message in result.stderr and not out.exists()


def test_save_reports_an_unwritable_path(tmp_path: Path) -> None:
    out = tmp_path / "missing-dir" / "t.jsonl"
    result = runner.invoke(app, ["trace", "save", "--workload", "router", "--programs", "1",
                                 "--out", str(out)])
    assert result.exit_code == 2
    assert f"cannot write {out}" in result.stderr
