"""Workloads, the virtual-time harness and the baseline policies (DESIGN.md section 7).

Everything here runs under a virtual clock with engine-twin cores in-process: a 96-program
fleet is simulated in seconds, deterministically for a seed. The live harness
(:mod:`thunder_middleware.sim.live`) runs the same workloads over HTTP.
"""

from thunder_middleware.sim.engines import EngineSpec, build_engine
from thunder_middleware.sim.harness import Harness, HarnessConfig, ProgramSource, run_simulation
from thunder_middleware.sim.metrics import RunResult
from thunder_middleware.sim.routing import POLICIES, BackendSnapshot, SimPolicy, make_policy
from thunder_middleware.sim.sweep import RunSpec, grid, run_many, run_one
from thunder_middleware.sim.trace import Trace, read_trace, write_trace
from thunder_middleware.sim.workloads import (
    SHAPES,
    ProgramSpec,
    StepSpec,
    Workload,
    WorkloadShape,
    workload,
)

__all__ = [
    "POLICIES",
    "SHAPES",
    "BackendSnapshot",
    "EngineSpec",
    "Harness",
    "HarnessConfig",
    "ProgramSource",
    "ProgramSpec",
    "RunResult",
    "RunSpec",
    "SimPolicy",
    "StepSpec",
    "Trace",
    "Workload",
    "WorkloadShape",
    "build_engine",
    "grid",
    "make_policy",
    "read_trace",
    "run_many",
    "run_one",
    "run_simulation",
    "workload",
    "write_trace",
]
