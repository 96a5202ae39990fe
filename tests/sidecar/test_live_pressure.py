"""The policy gate in front of real twins: pressure, pauses, restores, migrations, release.

Most tests run the published policy (``STRICT_POLICY``: ``--no-cost-aware``) because its
decisions are exact enough to assert on; one runs the default, cost-aware policy as a user
gets it, with assertions that hold for it.
"""

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

# the defaults a user gets (cost-aware policy, self-checked), with the same quick scrapes
DEFAULT_POLICY = [flag for flag in STRICT_POLICY if flag != "--no-cost-aware"]
assert DEFAULT_POLICY != STRICT_POLICY
# the cost-aware gate alone, as the self-check runs it once gating has paid
COST_AWARE_GATE = [*DEFAULT_POLICY, "--no-self-check"]


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
        _restore_goes_to_the_backend_with_room(server.url, first.url, second.url)


def _demand(url: str, backend: str) -> float:
    return metric(url, "thunder_sidecar_backend_demand_tokens", f'backend="{backend}"')


def _ask(client: httpx.Client, url: str, program_id: str, tokens: int, salt: int) -> None:
    response = client.post(url + "/v1/chat/completions",
                           json=chat_body(program_id, tokens, max_tokens=8, salt=salt))
    assert response.status_code == 200, response.text


def _restore_goes_to_the_backend_with_room(url: str, first: str, second: str) -> None:
    """A program paused on the full backend is restored onto the other, emptier one.

    Built step by step (decay is off, so acting programs keep their whole context): two
    600-token programs, one per twin; a 200-token "mover" joins one of them (home); the
    program on the other twin is released, which empties it. Then the mover grows to 500
    tokens: home is over its 1,024 tokens, the policy pauses home's acting program (acting
    before reasoning) and restores it at once where there is room, the empty twin.

    Salts the fleet did not use: no prompt here starts like one the twins still cache, so
    no first call teaches the policy a shared prefix that would shrink the demand.
    """
    salts = {"left": 11, "right": 13, "mover": 17}
    with httpx.Client(timeout=30) as client:
        assert _demand(url, first) == 0 and _demand(url, second) == 0, "fleet left demand"
        _ask(client, url, "left", 600, salt=salts["left"])
        _ask(client, url, "right", 600, salt=salts["right"])
        left_on, right_on = program(url, "left")["backend"], program(url, "right")["backend"]
        assert {left_on, right_on} == {first, second}, "a new program goes where there is room"
        _ask(client, url, "mover", 200, salt=salts["mover"])
        home = program(url, "mover")["backend"]
        stay, leave = ("left", "right") if home == left_on else ("right", "left")
        other = right_on if home == left_on else left_on
        released = client.post(url + "/programs/release", json={"program_id": leave})
        assert released.status_code == 200
        wait_until(lambda: _demand(url, other) == 0, what="the other twin's demand to clear")
        assert _demand(url, home) > 700  # home: the staying program and the mover
        _ask(client, url, "mover", 500, salt=salts["mover"])
        moved = program(url, stay)
        assert (moved["pauses"], moved["restores"], moved["migrations"]) == (1, 1, 1), moved
        assert moved["backend"] == other, "restored onto the twin that had room"
        assert program(url, "mover")["backend"] == home
        assert program(url, "mover")["pauses"] == 0
        _ask(client, url, stay, 650, salt=salts[stay])  # runs where it was restored
        assert program(url, stay)["timeline"][-1]["backend"] == other
        assert [step["backend"] for step in program(url, stay)["timeline"]] == [home, other]
        for name in (stay, "mover"):
            assert client.post(url + "/programs/release",
                               json={"program_id": name}).status_code == 200


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


async def _decoding_fleet(url: str, count: int, steps: int, output: int) -> None:
    """Agents whose calls decode ``output`` tokens each: requests that keep growing inside
    the engine, which is what makes an engine preempt when too many run at once."""
    async with httpx.AsyncClient(timeout=120) as client:

        async def agent(i: int) -> None:
            for step in range(steps):
                response = await client.post(url + "/v1/chat/completions", json=chat_body(
                    f"cost-{i}", 100 + 100 * step, max_tokens=output, salt=i))
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.05 + 0.03 * i)
            released = await client.post(url + "/programs/release",
                                         json={"program_id": f"cost-{i}"})
            assert released.status_code == 200, released.text

        await asyncio.gather(*(agent(i) for i in range(count)))


def test_cost_aware_gate_under_pressure(small_twin: RunningServer) -> None:
    """The cost-aware gate (what the default runs once its self-check finds gating pays: it
    may overcommit the cached contexts of acting programs, never the requests in flight) in
    front of one 1,024-token twin: six agents whose calls decode 200 tokens on contexts
    growing to ~600, several times the twin's capacity together.

    Every call succeeds and reaches the engine exactly once; the gate holds requests back
    (pauses), which keeps the engine out of a preemption storm: the same fleet sent to the
    twin directly was measured at 11 preemptions, through the sidecar at 3 (block rounding:
    the sidecar counts tokens, the engine 16-token blocks), so the bound sits between; after
    the releases every program is terminated and nothing holds demand."""
    count, steps = 6, 4
    with sidecar([small_twin.url], *COST_AWARE_GATE) as server:
        asyncio.run(_decoding_fleet(server.url, count, steps, output=200))
        programs = httpx.get(server.url + "/programs", timeout=5).json()["data"]
        assert sorted(p["program_id"] for p in programs) == [f"cost-{i}" for i in range(count)]
        assert all(p["status"] == "terminated" for p in programs), programs
        assert all(p["terminated_reason"] == "released" for p in programs), programs
        for p in programs:  # every step once: no failed, retried or doubled call
            timeline = program(server.url, p["program_id"])["timeline"]
            assert p["summary"]["steps"] == steps == len(timeline)
            assert all(step["outcome"] == "ok" and not step["retried"] for step in timeline)
        calls = count * steps
        assert metric(small_twin.url, "vllm:e2e_request_latency_seconds_count") == calls
        pauses = sum(p["pauses"] for p in programs)
        assert pauses > 0, programs
        assert pauses == metric(server.url, "thunder_sidecar_pauses_total")
        preemptions = metric(small_twin.url, "vllm:num_preemptions_total")
        assert preemptions <= calls // 4, f"{preemptions} preemptions for {calls} calls"
        assert metric(server.url, "thunder_sidecar_gate_waiting_requests") == 0
        assert metric(server.url, "thunder_sidecar_backend_demand_tokens") == 0
        assert httpx.get(server.url + "/health", timeout=5).json()["programs"] == 0


def test_default_policy_starts_in_pass_through_and_says_so(small_twin: RunningServer) -> None:
    """As shipped, the sidecar gates nothing until it has measured that gating pays: the
    fleet that the gate pauses above goes straight through (no pause, nothing held), and
    /metrics shows the backend in pass-through; with --no-self-check it shows the gate.

    Three steps per agent (18 calls) stay inside the check's first epoch (at least 24
    calls): at its end the check may start exploring the gate, which would pause acting
    programs while the last agents release theirs."""
    count, steps = 6, 3
    with sidecar([small_twin.url], *DEFAULT_POLICY) as server:
        gating = 'backend="' + small_twin.url + '"'
        assert metric(server.url, "thunder_sidecar_backend_gating", gating) == 0
        asyncio.run(_decoding_fleet(server.url, count, steps, output=200))
        programs = httpx.get(server.url + "/programs", timeout=5).json()["data"]
        assert all(p["summary"]["steps"] == steps for p in programs), programs
        assert sum(p["pauses"] for p in programs) == 0
        waits = [step["queue_wait_s"] for p in programs
                 for step in program(server.url, p["program_id"])["timeline"]]
        assert max(waits) < 0.05, "pass-through holds nothing at the gate"
    with sidecar([small_twin.url], *COST_AWARE_GATE) as server:
        assert metric(server.url, "thunder_sidecar_backend_gating",
                      'backend="' + small_twin.url + '"') == 1
