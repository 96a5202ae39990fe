"""Traces: a workload's programs saved as JSON lines, to replay the exact same work later.

The first line is a header (format version, workload name, seed, the shared system prompt);
every following line is one program. Token ids are stored explicitly, so a trace recorded
from a real agent run (not generated) replays the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thunder_middleware.sim.workloads import ProgramSpec, StepSpec, Workload

TRACE_FORMAT = "thunder-trace/1"


@dataclass(frozen=True)
class Trace:
    """A finite list of programs sharing one system prompt."""

    workload: str
    system_prompt: tuple[int, ...]
    programs: tuple[ProgramSpec, ...]
    seed: int | None = None

    @property
    def name(self) -> str:
        return self.workload

    @classmethod
    def from_workload(cls, source: Workload, count: int) -> Trace:
        return cls(source.name, source.system_prompt, tuple(source.programs(count)), source.seed)

    def program(self, index: int) -> ProgramSpec | None:
        """The ``index``-th program, or ``None`` past the end (a trace is finite)."""
        return self.programs[index] if index < len(self.programs) else None


def _program_record(spec: ProgramSpec) -> dict[str, Any]:
    return {
        "program_id": spec.program_id,
        "workload": spec.workload,
        "setup_s": spec.setup_s,
        "disk_gb": spec.disk_gb,
        "task": list(spec.task),
        "steps": [
            {
                "output_tokens": s.output_tokens,
                "tool": s.tool,
                "tool_duration_s": s.tool_duration_s,
                "observation": list(s.observation),
            }
            for s in spec.steps
        ],
    }


def _program_from_record(record: dict[str, Any]) -> ProgramSpec:
    steps = tuple(
        StepSpec(
            output_tokens=int(s["output_tokens"]),
            tool=str(s["tool"]),
            tool_duration_s=float(s["tool_duration_s"]),
            observation=tuple(int(t) for t in s["observation"]),
        )
        for s in record["steps"]
    )
    return ProgramSpec(
        program_id=str(record["program_id"]),
        workload=str(record["workload"]),
        task=tuple(int(t) for t in record["task"]),
        steps=steps,
        setup_s=float(record["setup_s"]),
        disk_gb=float(record["disk_gb"]),
    )


def write_trace(trace: Trace, path: Path) -> None:
    header = {
        "format": TRACE_FORMAT,
        "workload": trace.workload,
        "seed": trace.seed,
        "system_prompt": list(trace.system_prompt),
    }
    lines: Iterable[dict[str, Any]] = (_program_record(p) for p in trace.programs)
    with path.open("w") as out:
        out.write(json.dumps(header) + "\n")
        for record in lines:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")


def read_trace(path: Path) -> Trace:
    with path.open() as source:
        header = json.loads(source.readline())
        if header.get("format") != TRACE_FORMAT:
            raise ValueError(f"{path}: not a {TRACE_FORMAT} file (header {header.get('format')!r})")
        programs = tuple(_program_from_record(json.loads(line)) for line in source if line.strip())
    return Trace(
        workload=str(header["workload"]),
        system_prompt=tuple(int(t) for t in header["system_prompt"]),
        programs=programs,
        seed=header.get("seed"),
    )
