"""A manager that creates environments and then waits to be killed (a sidecar crash).

    python tests/tools/crash_worker.py PROVIDER OWNER_PREFIX COUNT [LOCAL_ROOT]

Prints ``READY <instance id>`` once every environment is ready, then sleeps until SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys

from thunder_middleware.tools import EnvironmentManager, ManagerConfig, make_provider, parse_spec


async def main() -> None:
    provider_name, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    options = {"root": sys.argv[4]} if provider_name == "local" else {}
    manager = EnvironmentManager(make_provider(provider_name, **options),
                                 ManagerConfig(port_range=(28000, 28999)))
    await manager.start()
    spec = {"command": ["sleep", "600"], "ports": [8080], "volumes": [{"mount": "/data"}]}
    if provider_name != "local":
        spec["image"] = "localhost/thunder-test:latest"
    for index in range(count):
        await manager.declare(f"{prefix}{index}", parse_spec(spec))
    for index in range(count):
        await manager.exec(f"{prefix}{index}", "sleep 600 &", timeout_s=30)  # a stray child
    print("READY", manager.instance_id, flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main())
