"""The policy gate in front of real twins: pressure, pauses, restores, migrations, release."""

from __future__ import annotations

import asyncio

import httpx

from tests.sidecar.conftest import (
    STRICT_POLICY,
    chat_body,
    metric,
    program,
    run_agent,
    sidecar,
    twin,
    wait_until,
)
from thunder_middleware.launch import RunningServer


async def _fleet(url: str, count: int, prefix: str) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(
            run_agent(client, url, f"{prefix}{i}", steps=4, start_tokens=200, growth=150,
                      tool_s=0.05 + 0.03 * i, salt=i, release=True)
            for i in range(count)
        ))


def test_pause_restore_and_migration_under_pressure() -> None:
    """Eight growing agents on two 1,024-token twins: more demand than capacity, so some
    requests wait at the gate, programs are paused and restored (some onto the other
    twin), and every call still succeeds."""
    with twin(time_scale=50.0, num_gpu_blocks=64, block_size=16) as first, \
            twin(time_scale=50.0, num_gpu_blocks=64, block_size=16) as second, \
            sidecar([first.url, second.url], *STRICT_POLICY, "--decay-base", "1.0") as server:
        asyncio.run(_fleet(server.url, 8, "agent-"))
        programs = httpx.get(server.url + "/programs", timeout=5).json()["data"]
        assert len(programs) == 8
        assert all(p["terminated_reason"] == "released" for p in programs)
        assert all(p["summary"]["steps"] == 4 for p in programs)
        pauses = sum(p["pauses"] for p in programs)
        restores = sum(p["restores"] for p in programs)
        migrations = sum(p["migrations"] for p in programs)
        assert pauses > 0 and restores > 0, programs
        assert migrations > 0, programs
        assert metric(server.url, "thunder_sidecar_pauses_total") == pauses
        assert metric(server.url, "thunder_sidecar_migrations_total") == migrations
        waits = [step["queue_wait_s"] for p in programs
                 for step in program(server.url, p["program_id"])["timeline"]]
        assert max(waits) > 0.01, "under pressure some request must have waited at its gate"
        used = {step["backend"] for p in programs
                for step in program(server.url, p["program_id"])["timeline"]}
        assert used == {first.url, second.url}
        # nothing is left waiting or in flight
        assert metric(server.url, "thunder_sidecar_gate_waiting_requests") == 0


def test_release_frees_capacity_for_a_queued_program(small_twin: RunningServer) -> None:
    """A big acting program holds the twin (decay off); a second program waits at the gate
    until the first is released, then runs at once."""
    with sidecar([small_twin.url], *STRICT_POLICY, "--decay-base", "1.0") as server, \
            httpx.Client(timeout=30) as client:
        first = client.post(server.url + "/v1/chat/completions",
                            json=chat_body("big", 850, max_tokens=8))
        assert first.status_code == 200, first.text
        demand = metric(server.url, "thunder_sidecar_backend_demand_tokens")
        assert demand > 800

        async def queued_then_release() -> tuple[int, float]:
            async with httpx.AsyncClient(timeout=30) as aclient:
                waiting = asyncio.create_task(aclient.post(
                    server.url + "/v1/chat/completions",
                    json=chat_body("small", 300, max_tokens=8, salt=3)))
                await asyncio.sleep(0.5)
                assert not waiting.done(), "the small program should wait at its gate"
                assert program(server.url, "small")["waiting_requests"] == 1
                released = await aclient.post(server.url + "/programs/release",
                                              json={"program_id": "big"})
                assert released.status_code == 200
                assert released.json()["status"] == "terminated"
                response = await asyncio.wait_for(waiting, 10)
                return response.status_code, program(server.url, "small")["timeline"][0][
                    "queue_wait_s"]

        status, waited = asyncio.run(queued_then_release())
        assert status == 200
        assert waited >= 0.4
        wait_until(lambda: metric(server.url, "thunder_sidecar_backend_demand_tokens") < 500,
                   what="demand to drop after the release")
        assert program(server.url, "big")["terminated_reason"] == "released"
