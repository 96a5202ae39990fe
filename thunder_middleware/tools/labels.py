"""Labels that mark every resource the manager creates, and who may reap what.

Every container, volume, pod and local process carries the owner program, the sidecar instance
and a managed flag. Reaping at start-up relies on them alone, so a crashed sidecar leaks nothing
even when its own bookkeeping is gone. An instance id names the host, pid and pid start time of
the sidecar that made a resource: a new manager reaps only resources whose maker is provably
dead, so two sidecars sharing one engine never reap each other's live environments.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path

MANAGED = "thunder.managed"
OWNER = "thunder.owner"
INSTANCE = "thunder.instance"
ENV_ID = "thunder.env"

#: Environment variables carrying the same labels into local processes (found via /proc).
ENV_VAR_MANAGED = "THUNDER_MANAGED"
ENV_VAR_OWNER = "THUNDER_OWNER"
ENV_VAR_INSTANCE = "THUNDER_INSTANCE"
ENV_VAR_ENV_ID = "THUNDER_ENV_ID"


def _pid_start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot: tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if len(fields) < 20 or fields[0] in {"Z", "X"}:  # a zombie is dead, merely unreaped
        return None
    return fields[19]


def current_instance_id() -> str:
    """This process's instance id: ``host:pid:start_ticks``."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_pid_start_ticks(pid) or '0'}"


def instance_is_dead(instance_id: str) -> bool:
    """True only when the instance ran on this host and its process is gone.

    An instance of another host (a sidecar sharing a remote engine) is never declared dead:
    we cannot tell, and reaping a live neighbour's environments would break its programs.
    """
    try:
        host, pid_text, ticks = instance_id.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    return _pid_start_ticks(pid) != ticks


def resource_labels(owner: str, instance_id: str, env_id: str) -> dict[str, str]:
    return {MANAGED: "true", OWNER: owner, INSTANCE: instance_id, ENV_ID: env_id}


def process_labels(owner: str, instance_id: str, env_id: str) -> dict[str, str]:
    """The labels as environment variables for local processes."""
    return {
        ENV_VAR_MANAGED: "true",
        ENV_VAR_OWNER: owner,
        ENV_VAR_INSTANCE: instance_id,
        ENV_VAR_ENV_ID: env_id,
    }


_K8S_INVALID = re.compile(r"[^A-Za-z0-9_.-]")


def kubernetes_label_value(value: str) -> str:
    """Kubernetes label values allow 63 chars of ``[A-Za-z0-9_.-]``; program keys have ``/``.

    The readable part is kept where it fits and a hash suffix keeps distinct keys distinct; the
    full key goes into an annotation.
    """
    cleaned = _K8S_INVALID.sub("_", value).strip("_.-")
    if cleaned == value and len(value) <= 63:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{cleaned[:50].strip('_.-')}-{digest}".strip("_.-")
