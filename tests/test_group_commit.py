"""A job's concurrent reports share store writes (group commit) and its ranks share
plans (``sharedplans``): fewer writes and computations, the same outcome per rank as
reports one at a time, bit for bit, on every store."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from paramsched.server.errors import FailedPrecondition, InvalidArgument
from paramsched.server.service import SchedulerService
from paramsched.server.store import EmbeddedJobStore, JobStore

CONFIG = [
    {"type": "LinearLR", "start_factor": 0.01, "by_epoch": False, "end": 40},
    {"type": "CosineAnnealingLR", "T_max": 500, "by_epoch": False, "begin": 40},
    {"type": "CosineAnnealingMomentum", "T_max": 500, "by_epoch": False, "eta_min": 0.8},
]
GROUPS = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.05, "momentum": 0.95}]
SPEC = {"param_scheduler": CONFIG, "initial_values": GROUPS, "max_iters": 2000}
PLATEAU_SPEC = {
    "param_scheduler": [
        {"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "end": 4},
        {"type": "ReduceOnPlateauLR", "monitor": "loss", "patience": 0, "factor": 0.5}],
    "initial_values": GROUPS, "epoch_length": 10, "max_epochs": 20,
}


class CountingStore:
    """The store, with its report writes counted."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.writes: list[dict[int, int]] = []

    async def report(self, job_id: str, **kwargs: Any) -> Any:
        ranks = {kwargs["rank"]: kwargs["iteration"], **(kwargs.get("more_progress") or {})}
        self.writes.append(ranks)
        return await self.inner.report(job_id, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _bits(plan: Any) -> list[list[dict[str, str]]]:
    return [[{k: v.hex() for k, v in group.items()} for group in row] for row in plan.values]


async def _expected(job_id: str, start: int, stop: int, reference: SchedulerService) -> Any:
    page = await reference.values(job_id, start, stop)
    return _bits(page)


def test_concurrent_reports_share_writes_and_each_rank_gets_its_own_plan(
        open_job_store: Any, store_loop: Any) -> None:
    async def scenario() -> None:
        store = CountingStore(open_job_store())
        service = SchedulerService(store, preview_processes=False)  # type: ignore[arg-type]
        await service.attach("gc", SPEC, world_size=16, plan_size=16)
        rng = random.Random(7)
        reports = 0
        last: dict[int, int] = {}
        for step in range(0, 400, 16):
            # Every rank reports about the same iteration at once, as ranks do.
            at = {rank: step + rng.randrange(4) for rank in range(16)}
            plans = await asyncio.gather(*(
                service.report("gc", generation=1, rank=rank, iteration=it, plan_size=16)
                for rank, it in at.items()))
            reports += len(plans)
            last = {rank: max(last.get(rank, 0), it) for rank, it in at.items()}
            for (rank, it), plan in zip(at.items(), plans, strict=True):
                assert plan.start == it and len(plan.values) == 16, rank
                assert _bits(plan) == await _expected("gc", it, it + 16, service)
        assert len(store.writes) < reports / 2  # (merged: fewer writes than reports)
        assert sum(len(w) for w in store.writes) <= reports
        view = await service.get("gc")
        assert view.record.progress == last
        # A service that never shared anything computes the same values.
        fresh = SchedulerService(open_job_store(), preview_processes=False)
        assert _bits(await fresh.values("gc", 0, 420)) == _bits(
            await service.values("gc", 0, 420))

    store_loop.run(scenario())


def test_a_rank_outside_the_world_size_is_refused_alone(open_job_store: Any,
                                                       store_loop: Any) -> None:
    async def scenario() -> None:
        store = CountingStore(open_job_store())
        service = SchedulerService(store, preview_processes=False)  # type: ignore[arg-type]
        await service.attach("small", SPEC, world_size=4, plan_size=8)
        for _ in range(3):  # so later ones merge while the first write is in flight
            outcomes = await asyncio.gather(*(
                service.report("small", generation=1, rank=rank, iteration=5, plan_size=8)
                for rank in (0, 1, 7, 2, 3)), return_exceptions=True)
            refused = outcomes.pop(2)
            assert isinstance(refused, InvalidArgument) and refused.field == "rank"
            assert all(plan.start == 5 for plan in outcomes)  # type: ignore[union-attr]
        view = await service.get("small")
        assert view.record.progress == {0: 5, 1: 5, 2: 5, 3: 5}

    store_loop.run(scenario())


def test_every_merged_report_of_a_stale_generation_is_fenced(open_job_store: Any,
                                                             store_loop: Any) -> None:
    async def scenario() -> None:
        shared = open_job_store()
        first = SchedulerService(shared, preview_processes=False)
        other = SchedulerService(shared, preview_processes=False)
        await first.attach("fenced", SPEC, world_size=8, plan_size=8, run_id="a")
        for rank in range(8):
            await first.report("fenced", generation=1, rank=rank, iteration=10, plan_size=8)
        state = await first.get_state("fenced", 10)
        # Another server resumes the job from a checkpoint: a new generation.
        await other.load_state("fenced", state, run_id="b", world_size=8)
        outcomes = await asyncio.gather(*(
            first.report("fenced", generation=1, rank=rank, iteration=11, plan_size=8)
            for rank in range(8)), return_exceptions=True)
        assert all(isinstance(o, FailedPrecondition) for o in outcomes), outcomes

    store_loop.run(scenario())


def test_a_plan_cut_at_a_pending_decision_is_not_shared_after_the_decision(
        store_loop: Any, tmp_path: Path) -> None:
    async def scenario() -> None:
        service = SchedulerService(EmbeddedJobStore(tmp_path), preview_processes=False)
        await service.attach("plateau", PLATEAU_SPEC, world_size=2, plan_size=30)
        short = await service.report("plateau", generation=1, rank=0, iteration=5,
                                     plan_size=30)
        assert len(short.values) == 5 and short.waits_for_epoch == 0
        again = await service.report("plateau", generation=1, rank=1, iteration=5,
                                     plan_size=30)
        assert again is short  # (the same key: the plan computed once)
        await service.report("plateau", generation=1, rank=0, iteration=10, epoch_end=0,
                             metrics={"loss": 1.0}, plan_size=1)
        longer = await service.report("plateau", generation=1, rank=1, iteration=5,
                                      plan_size=30)
        assert len(longer.values) > len(short.values)
        assert _bits(longer) == _bits(await service.values("plateau", 5, 5 + len(
            longer.values)))

    store_loop.run(scenario())


def test_a_job_created_again_under_its_id_gets_its_own_plans(store_loop: Any,
                                                            tmp_path: Path) -> None:
    async def scenario() -> None:
        service = SchedulerService(EmbeddedJobStore(tmp_path), preview_processes=False)
        await service.attach("again", SPEC, world_size=1, plan_size=16)
        before = await service.report("again", generation=1, rank=0, iteration=100,
                                      plan_size=16)
        await service.delete("again")
        other = {**SPEC, "initial_values": [{"lr": 0.3, "momentum": 0.5}] * 2}
        await service.attach("again", other, world_size=1, plan_size=16)
        after = await service.report("again", generation=1, rank=0, iteration=100,
                                     plan_size=16)
        assert after is not before and _bits(after) != _bits(before)
        assert after.incarnation != before.incarnation
        assert _bits(after) == _bits(await service.values("again", 100, 116))
        # The same spec again: the same values, but the plan names its own incarnation.
        await service.delete("again")
        await service.attach("again", SPEC, world_size=1, plan_size=16)
        same = await service.report("again", generation=1, rank=0, iteration=100,
                                    plan_size=16)
        assert _bits(same) == _bits(before)
        assert same.incarnation not in (before.incarnation, after.incarnation)

    store_loop.run(scenario())


class GatedStore(CountingStore):
    """Counts report writes; while ``gate`` is set, a write waits until it opens."""

    def __init__(self, inner: JobStore) -> None:
        super().__init__(inner)
        self.gate: asyncio.Event | None = None

    async def report(self, job_id: str, **kwargs: Any) -> Any:
        gate = self.gate
        if gate is not None:
            self.gate = None  # (only the next write waits)
            self.writes.append({kwargs["rank"]: kwargs["iteration"],
                                **(kwargs.get("more_progress") or {})})
            await gate.wait()
            return await self.inner.report(job_id, **kwargs)
        return await super().report(job_id, **kwargs)


async def _job(store: JobStore, world_size: int) -> None:
    service = SchedulerService(store, preview_processes=False)
    await service.attach("delay", SPEC, world_size=world_size, plan_size=8)


def _commit(store: GatedStore, delay: float) -> Any:
    from paramsched.server.service.groupcommit import GroupCommit
    return GroupCommit(store, delay=delay)  # type: ignore[arg-type]


def _report(commit: Any, rank: int, iteration: int) -> Any:
    return commit.report("delay", generation=1, rank=rank, iteration=iteration,
                         issue_until=iteration + 8, known_spec_hash="", known_changes=-1,
                         incarnation=None, finished_at=0.0, held_until=0)


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _behind_a_write(store: GatedStore, commit: Any, iteration: int,
                          ranks: tuple[int, ...]) -> tuple[Any, list[Any]]:
    """Rank 0's report, whose write is held until the reports of ``ranks`` wait for it;
    then the write goes on. Returns its future and theirs."""
    store.gate = gate = asyncio.Event()
    first = asyncio.ensure_future(_report(commit, 0, iteration))
    await _turns()
    behind = [asyncio.ensure_future(_report(commit, rank, iteration)) for rank in ranks]
    await _turns()
    gate.set()
    return first, behind


def test_a_report_with_no_write_of_its_job_in_flight_never_waits_for_the_delay(
        open_job_store: Any, store_loop: Any) -> None:
    async def scenario() -> None:
        store = GatedStore(open_job_store())
        await _job(store, 4)
        commit = _commit(store, delay=60.0)  # (a wait would outlast the test's timeout)
        for iteration in range(5):  # one rank alone, as a job of one rank reports
            record = await asyncio.wait_for(_report(commit, 0, iteration), 10)
            assert record.progress[0] == iteration
        assert store.writes == [{0: i} for i in range(5)]

    store_loop.run(scenario())


def test_reports_behind_a_write_go_at_once_when_every_rank_is_in(
        open_job_store: Any, store_loop: Any) -> None:
    async def scenario() -> None:
        store = GatedStore(open_job_store())
        await _job(store, 3)
        commit = _commit(store, delay=60.0)
        # All ranks report together: rank 0's write goes first, 1 and 2 wait for it and
        # then need not wait for anyone (0 was in the last write).
        first, others = await _behind_a_write(store, commit, 10, (1, 2))
        records = await asyncio.wait_for(asyncio.gather(first, *others), 10)
        assert store.writes == [{0: 10}, {1: 10, 2: 10}]
        assert records[1] is records[2] and records[2].progress == {0: 10, 1: 10, 2: 10}
        # Rank 0 alone in a write, rank 1 behind it, rank 2 still to come: the batch
        # waits for it, and goes as soon as it is in.
        first, (second,) = await _behind_a_write(store, commit, 11, (1,))
        await asyncio.wait_for(first, 10)
        await _turns()
        assert not second.done() and store.writes[2:] == [{0: 11}]  # (it waits for 2)
        third = asyncio.ensure_future(_report(commit, 2, 11))
        await asyncio.wait_for(asyncio.gather(second, third), 10)
        assert store.writes[2:] == [{0: 11}, {1: 11, 2: 11}]

    store_loop.run(scenario())


def test_a_batch_missing_a_rank_goes_once_the_delay_is_over(open_job_store: Any,
                                                           store_loop: Any) -> None:
    async def scenario() -> None:
        store = GatedStore(open_job_store())
        await _job(store, 3)
        commit = _commit(store, delay=0.05)
        first, (second,) = await _behind_a_write(store, commit, 20, (1,))  # (not 2)
        record = await asyncio.wait_for(second, 10)
        await first
        assert store.writes == [{0: 20}, {1: 20}]
        assert record.progress == {0: 20, 1: 20}

    store_loop.run(scenario())


def test_a_write_left_in_flight_by_a_closed_event_loop_does_not_hold_the_next_loop(
        tmp_path: Path) -> None:
    store = GatedStore(EmbeddedJobStore(tmp_path))
    commit = _commit(store, delay=60.0)
    loop = asyncio.new_event_loop()  # closed below with its task still pending
    loop.run_until_complete(_job(store, 2))

    async def left_hanging() -> None:
        store.gate = asyncio.Event()  # never opened: the write stays in flight
        hanging.append(asyncio.ensure_future(_report(commit, 0, 5)))
        await _turns()

    hanging: list[Any] = []
    loop.run_until_complete(left_hanging())
    loop.close()
    with asyncio.Runner() as runner:  # (as a service outliving its first loop)
        record = runner.run(asyncio.wait_for(_report(commit, 1, 6), 10))
        assert record.progress[1] == 6
        runner.run(store.inner.close())
