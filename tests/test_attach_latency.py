"""What keeps ``attach`` short (issue 13) without changing what it hands out.

A new job of a spec this process computed before starts from a copy of that
computation (``FirstPlans``): the copy must compute every value, keyframe and
decision-dependent value exactly as a fresh schedule does, and the job must still be
durable when ``attach`` returns. A new job's first plan reads no keyframe (a new
incarnation has none). A spec whose arithmetic fails is refused every time, and
nothing of it is stored or kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from paramsched.server.errors import InvalidArgument
from paramsched.server.schedules import ConfigError, build_job_spec
from paramsched.server.schedules.reschedule import Schedule
from paramsched.server.schedules.timeline import Timeline
from paramsched.server.service.core import SchedulerService
from paramsched.server.service.firstplans import FirstPlans
from paramsched.server.store import content_hash
from paramsched.server.store.embedded import EmbeddedJobStore

from strategies import Case, cases

WARMUP_COSINE = [
    {"type": "LinearLR", "start_factor": 0.001, "by_epoch": False, "begin": 0, "end": 50},
    {"type": "CosineAnnealingLR", "by_epoch": True, "convert_to_iter_based": True},
]
SPEC = {"param_scheduler": WARMUP_COSINE,
        "initial_values": [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
                           {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}],
        "epoch_length": 10, "max_epochs": 40}


def exact(rows: list[Any]) -> list[Any]:
    """Values with their types and bits (float32 results are a float subclass)."""
    return [[{k: (type(v).__name__, v.hex() if isinstance(v, float) else v)
              for k, v in group.items()} for group in row] for row in rows]


def spec_of(case: Case) -> Any:
    try:
        return build_job_spec(case.param_scheduler, case.initial_values,
                              epoch_length=case.epoch_length, max_epochs=case.max_epochs,
                              max_iters=case.max_iters, dtypes=case.dtypes)
    except ConfigError:
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), cut=st.floats(0.0, 1.0))
def test_a_copied_first_plan_computes_exactly_like_a_fresh_schedule(case: Case, cut: float):
    spec = spec_of(case)
    assume(spec is not None)
    last = spec.max_iters + 1
    first = max(1, int(cut * last))
    plans = FirstPlans()
    spec_hash = content_hash(spec.to_dict())
    try:
        original = plans.compute(spec, spec_hash, first)
    except ConfigError:
        assert len(plans) == 0  # nothing kept of a spec that does not compute
        return
    copy = plans.get(spec_hash, spec, first)
    assert copy is not None and copy is not original and copy.spec is spec
    assert plans.get(spec_hash, spec, first + 1) is None  # holds `first` iterations only
    decisions = dict(case.metrics)  # (some lack what a plateau needs: raised alike)

    def outcome(schedule: Schedule, pieces: int) -> Any:
        step = max(1, last // pieces)
        got: list[Any] = []
        try:  # in pieces, as plans go: continuing from the copied states and caches
            for start in range(0, last, step):
                got += schedule.values_range(start, min(last, start + step), decisions)
        except Exception as exc:  # whatever a fresh schedule raises, the copy must too
            return type(exc).__name__, len(got)
        return exact(got)

    want = outcome(Schedule(spec), 1)
    assert outcome(copy, 3) == outcome(Schedule(spec), 3)
    assert outcome(original, 1) == want
    if isinstance(want, list):
        fresh, again = Schedule(spec), plans.get(spec_hash, spec, first)
        assert again is not None
        for t in sorted({0, first - 1, last - 1, last // 2}):
            assert again.keyframe(t, decisions) == fresh.keyframe(t, decisions)
    # Extended (as attach does in the background) it still computes alike.
    ahead = FirstPlans.ahead(spec, first)
    try:
        plans.extend(spec_hash, spec, ahead)
    except ConfigError:
        assert plans.computed(spec_hash) == first  # kept as it was
        return
    assert plans.computed(spec_hash) == ahead
    longer = plans.get(spec_hash, spec, ahead)
    assert longer is not None
    assert outcome(longer, 2) == outcome(Schedule(spec), 2)


def test_kept_copies_are_bounded():
    plans = FirstPlans(max_entries=2)
    specs = [build_job_spec(WARMUP_COSINE, [{"lr": lr}], epoch_length=10, max_epochs=4)
             for lr in (0.1, 0.2, 0.3)]
    hashes = [content_hash(s.to_dict()) for s in specs]
    for spec, spec_hash in zip(specs, hashes, strict=True):
        plans.compute(spec, spec_hash, 16)
    assert len(plans) == 2 and plans.get(hashes[0], specs[0], 16) is None
    assert plans.get(hashes[2], specs[2], 16) is not None
    small = FirstPlans(max_bytes=plans.nbytes // 2 + 1)
    for spec, spec_hash in zip(specs, hashes, strict=True):
        small.compute(spec, spec_hash, 16)
    assert len(small) == 1 and small.nbytes <= small.max_bytes
    none = FirstPlans(max_entry_bytes=10)
    assert none.compute(specs[0], hashes[0], 16).values_range(0, 1, {})
    assert len(none) == 0


class Counted:
    """Counts calls of a real method (the method still runs)."""

    def __init__(self, owner: Any, name: str) -> None:
        self.calls = 0
        self.owner, self.name = owner, name
        self.original = getattr(owner, name)

    def __enter__(self) -> Counted:
        original = self.original

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        setattr(self.owner, self.name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.owner, self.name, self.original)


def test_a_new_job_of_a_known_spec_replays_nothing_reads_no_keyframe_and_is_durable(
        tmp_path: Path):
    async def scenario() -> None:
        store = EmbeddedJobStore(tmp_path)
        try:
            service = SchedulerService(store)
            one = await service.attach("one", SPEC, world_size=1, plan_size=64, run_id="r")
            assert not service._background  # a spec seen once is not extended
            plans = service._first_plan_copies
            assert plans.computed(next(iter(service._specs))) == 64
            with Counted(Timeline, "state_at") as replays, \
                    Counted(store, "keyframe") as keyframes:
                two = await service.attach("two", SPEC, world_size=1, plan_size=64,
                                           run_id="r")
                # Durable when attach returns: another store on the same files sees it.
                other = EmbeddedJobStore(tmp_path)
                try:
                    stored = await other.get("two")
                finally:
                    await other.close()
                job_replays = replays.calls
                # Seen again, the spec's copy goes on to the first refill's end (four
                # attach-sized plans), in the background (which replays, once).
                while service._background:
                    await asyncio.gather(*service._background)
            assert two.created and stored is not None
            assert stored.issued_until == 64 and stored.progress == {0: 0}
            assert keyframes.calls == 0 and job_replays <= 1  # (<= 1: the extension's)
            spec = next(iter(service._specs.values()))
            ahead = FirstPlans.ahead(spec, 64)  # 4 plans, as far as the value cache holds
            assert ahead == min(256, Timeline.max_cached_cells // 2) > 64
            assert plans.computed(stored.spec_hash) == ahead
            with Counted(Timeline, "state_at") as replays:
                await service.attach("three", SPEC, world_size=1, plan_size=64, run_id="r")
            assert replays.calls == 0 and not service._background
            # ... so the next job's first refill needs no replay either.
            schedule = service._jobs["three"].schedule
            assert [schedule.replay_distance(t) for t in range(ahead)] == [0] * ahead
            assert schedule.replay_distance(ahead) > 0
            assert two.plan.incarnation != one.plan.incarnation
            assert exact(two.plan.values) == exact(one.plan.values)
            assert dataclasses.replace(two.plan, incarnation="") == dataclasses.replace(
                one.plan, incarnation="")
            # Both go on alike past the first plan, and match a fresh computation.
            want = Schedule(spec).values_range(0, spec.max_iters + 1, {})
            for job in ("one", "two", "three"):
                page = await service.values(job, 0, spec.max_iters + 1)
                assert exact(page.values) == exact(want)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_joining_an_existing_job_still_reads_its_keyframe(tmp_path: Path):
    async def scenario() -> None:
        store = EmbeddedJobStore(tmp_path)
        try:
            await SchedulerService(store).attach("job", SPEC, world_size=1, run_id="r")
            cold = SchedulerService(store)  # another server process: nothing cached
            with Counted(store, "keyframe") as keyframes:
                joined = await cold.attach("job", SPEC, world_size=1, run_id="r")
            assert not joined.created and keyframes.calls == 1
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_spec_whose_arithmetic_fails_is_refused_every_time_and_never_kept(tmp_path: Path):
    # gamma**2 overflows at the milestone listed twice (iteration 2, in the first plan).
    bad = {"param_scheduler": [
        {"type": "LinearLR", "by_epoch": False, "end": 2},
        {"type": "MultiStepLR", "by_epoch": False, "milestones": [2, 2], "gamma": 1e200}],
        "initial_values": [{"lr": 0.1}], "max_iters": 100}

    async def scenario() -> None:
        store = EmbeddedJobStore(tmp_path)
        try:
            service = SchedulerService(store)
            for job in ("bad", "bad", "other"):
                with pytest.raises(InvalidArgument) as info:
                    await service.attach(job, bad, world_size=1, run_id="r")
                assert "param_scheduler[1].gamma" in (info.value.field or "")
                assert await store.get(job) is None
            assert len(service._first_plan_copies) == 0
        finally:
            await store.close()

    asyncio.run(scenario())
