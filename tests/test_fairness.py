"""The edge's admission: a caller floods only its own queue, and yields to callers present."""

from __future__ import annotations

import asyncio

from gateway.execution.fairness import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def enter(admission: Admission, caller: str, held: list[str], release: asyncio.Event) -> None:
    async with admission.hold(caller):
        held.append(caller)
        await release.wait()
        held.remove(caller)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_caller_alone_has_its_whole_share_and_waits_behind_itself() -> None:
    async def scenario() -> None:
        admission = Admission(4, parallelism=2, clock=Clock())
        held: list[str] = []
        release = asyncio.Event()
        tasks = [asyncio.create_task(enter(admission, "flood", held, release)) for _ in range(10)]
        await settle()
        assert held.count("flood") == 4
        release.set()
        await asyncio.gather(*tasks)
        assert held == []

    asyncio.run(scenario())


def test_while_another_caller_is_present_a_flood_starts_one_at_a_time() -> None:
    async def scenario() -> None:
        clock = Clock()
        admission = Admission(4, parallelism=2, clock=clock)
        held: list[str] = []
        victim_done = asyncio.Event()
        # the victim asks one request and is done; it stays present for the linger
        victim_done.set()
        await enter(admission, "victim", held, victim_done)
        gates = [asyncio.Event() for _ in range(6)]
        tasks = [asyncio.create_task(enter(admission, "flood", held, gate)) for gate in gates]
        await settle()
        assert held.count("flood") == 1  # two present on two CPUs: one each
        gates[0].set()
        await settle()
        assert held.count("flood") == 1  # the next in line took the freed turn, no more
        clock.now += 2.0  # the victim has been gone longer than the linger
        gates[1].set()
        await settle()
        assert held.count("flood") == 4  # alone again: the whole share
        for gate in gates:
            gate.set()
        await asyncio.gather(*tasks)
        assert held == []

    asyncio.run(scenario())


def test_a_waiter_whose_client_leaves_gives_its_turn_back() -> None:
    async def scenario() -> None:
        admission = Admission(1, clock=Clock())
        held: list[str] = []
        first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(enter(admission, "a", held, first))
        await settle()
        leaving = asyncio.create_task(enter(admission, "a", held, second))
        staying = asyncio.create_task(enter(admission, "a", held, third))
        await settle()
        leaving.cancel()
        await settle()
        first.set()
        await settle()
        assert held == ["a"] and not staying.done()  # the third request, not the cancelled one
        third.set()
        await asyncio.gather(running, staying)
        assert leaving.cancelled()
        # nothing is left counted: a new request enters at once
        fourth = asyncio.Event()
        fourth.set()
        await asyncio.wait_for(enter(admission, "a", held, fourth), 1.0)

    asyncio.run(scenario())
