"""The program-aware scheduling policy (DESIGN section 3), pure and clock-injected.

``ProgramScheduler`` takes events with an explicit ``now`` and returns decisions; the live
sidecar and the virtual-time simulator both drive it and apply what it returns.
"""

from thunder_middleware.policy.config import PolicyConfig
from thunder_middleware.policy.cost import CostInputs, effective_lambda, steps_per_second
from thunder_middleware.policy.demand import decay
from thunder_middleware.policy.scheduler import ProgramScheduler
from thunder_middleware.policy.types import (
    Admit,
    CallTiming,
    Decision,
    Expire,
    MarkForPause,
    Pause,
    Phase,
    Restore,
    Status,
    Usage,
)
from thunder_middleware.policy.views import BackendView, ProgramView

__all__ = [
    "Admit",
    "BackendView",
    "CallTiming",
    "CostInputs",
    "Decision",
    "Expire",
    "MarkForPause",
    "Pause",
    "Phase",
    "PolicyConfig",
    "ProgramScheduler",
    "ProgramView",
    "Restore",
    "Status",
    "Usage",
    "decay",
    "effective_lambda",
    "steps_per_second",
]
