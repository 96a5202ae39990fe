"""A twin killed in the middle of a multi-program run: every program finishes, none twice.

Counted on both sides: the client counts the answers it got per program; the sidecar's
timeline counts the steps that ended ``ok`` per program (a call that failed on the dead
twin is a ``failed`` step, its retry elsewhere the ``ok`` one). Equal counts, equal to the
steps each agent made, mean no call was lost and none was answered twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.sidecar.conftest import STRICT_POLICY, chat_body, sidecar, twin, wait_until

PROGRAMS = 12
STEPS = 8


async def _agent(client: httpx.AsyncClient, url: str, name: str, salt: int,
                 answered: Counter[str], answers: set[str]) -> None:
    for step in range(STEPS):
        body = chat_body(name, 40 + 25 * step, max_tokens=6, salt=salt)
        response = await client.post(url + "/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        completion_id = response.json()["id"]
        assert completion_id not in answers  # no answer delivered twice
        answers.add(completion_id)
        answered[name] += 1
        await asyncio.sleep(0.1)


def test_twin_killed_mid_run_loses_no_program_and_repeats_no_step() -> None:
    with twin(time_scale=5.0) as doomed, twin(time_scale=5.0) as survivor, \
            sidecar([doomed.url, survivor.url], *STRICT_POLICY) as server:
        answered: Counter[str] = Counter()
        answers: set[str] = set()

        async def fleet() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                agents = [asyncio.create_task(_agent(client, server.url, f"p{i}", i, answered,
                                                     answers)) for i in range(PROGRAMS)]

                def mid_run() -> bool:
                    return sum(answered.values()) >= PROGRAMS * STEPS // 3

                while not mid_run():
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(doomed.kill)
                await asyncio.gather(*agents)

        asyncio.run(fleet())
        assert answered == Counter({f"p{i}": STEPS for i in range(PROGRAMS)})

        programs = {p["program_id"]: p
                    for p in httpx.get(server.url + "/programs", timeout=10).json()["data"]}
        assert set(programs) == {f"p{i}" for i in range(PROGRAMS)}
        outcomes: Counter[str] = Counter()
        for name, summary in programs.items():
            timeline = httpx.get(f"{server.url}/programs/{name}", timeout=10).json()["timeline"]
            ok_steps = [step for step in timeline if step["outcome"] == "ok"]
            assert len(ok_steps) == STEPS, (name, timeline)
            outcomes.update(step["outcome"] for step in timeline)
            assert summary["backend"] in (survivor.url, None)
        # a call cut by the kill is a "failed" step (retried elsewhere), never a second "ok"
        assert set(outcomes) <= {"ok", "failed"}
        assert sum(1 for p in programs.values() if p["migrations"]) >= 1

        health = httpx.get(server.url + "/health", timeout=5).json()
        assert {b["url"]: b["healthy"] for b in health["backends"]} == {
            doomed.url: False, survivor.url: True}
        wait_until(lambda: httpx.get(server.url + "/health", timeout=5).json()
                   ["waiting_requests"] == 0, what="no request left waiting")
