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
