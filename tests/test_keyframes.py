"""Keyframes: a schedule continued from stored replay states equals the replay from 0,
bit for bit, and a server never replays a job from iteration 0 to answer near its
frontier: not after a restart, not on another replica, not after ``LoadState`` into an
empty store, not for a job the cache evicted.

The property test takes keyframes at random iterations of random jobs (with random
changes and plateau decisions), sends them through JSON like the stores do, seeds a
fresh schedule with them and compares every later value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from paramsched.server.schedules import ConfigError, MetricsError, build_job_spec
from paramsched.server.schedules.reschedule import Schedule, build_change
from paramsched.server.service import SchedulerService
from paramsched.server.store import EmbeddedJobStore, canonical_json

from strategies import Case, cases

GroupRows = list[list[dict[str, float]]]


def bits(rows: GroupRows) -> list[list[dict[str, str]]]:
    """Rows compared bit for bit (NaN equals NaN, -0.0 differs from 0.0)."""
    return [[{p: float(v).hex() if not math.isnan(v) else "nan" for p, v in g.items()}
             for g in row] for row in rows]


def _spec(case: Case) -> Any:
    return build_job_spec(case.param_scheduler, case.initial_values,
                          epoch_length=case.epoch_length, max_epochs=case.max_epochs,
                          max_iters=case.max_iters, dtypes=case.dtypes)


@st.composite
def changes(draw: st.DrawFn, max_iters: int) -> list[dict[str, Any]]:
    """Up to three changes in order: replace (a config, or a set), multiply, stretch."""
    out: list[dict[str, Any]] = []
    start = 0
    for _ in range(draw(st.integers(0, 3))):
        start = draw(st.integers(start, max_iters))
        kind = draw(st.sampled_from(["replace", "set", "multiply", "stretch"]))
        if kind == "replace":
            out.append({"from_iteration": start, "param_scheduler": [
                {"type": "LinearLR", "start_factor": draw(st.floats(0.1, 1.0)),
                 "by_epoch": False, "end": draw(st.integers(1, 20))}]})
        elif kind == "set":
            out.append({"from_iteration": start, "params": ["lr"],
                        "start_values": {"lr": draw(st.floats(1e-4, 1.0))}})
        elif kind == "multiply":
            out.append({"from_iteration": start, "mode": "multiply", "param_scheduler": [
                {"type": "ConstantLR", "factor": draw(st.floats(0.1, 1.0)),
                 "by_epoch": False, "end": draw(st.integers(1, 20))}]})
        else:
            out.append({"from_iteration": start, "mode": "stretch",
                        "max_iters": start + draw(st.integers(1, 2 * max_iters + 2))})
    return out


def _schedule(case: Case, data: list[dict[str, Any]]) -> Schedule:
    schedule = Schedule(_spec(case))
    for i, change in enumerate(data):
        schedule.add(build_change(schedule, change, decisions=case.metrics,
                                    where=f"change {i}"))
    return schedule


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=cases(), data=st.data())
def test_values_continued_from_a_keyframe_equal_the_replay_from_zero(
        case: Case, data: st.DataObject) -> None:
    try:
        first = Schedule(_spec(case))
        for epoch, metrics in case.metrics.items():  # the service refuses unusable ones
            first.check_metrics(epoch, metrics)
        drawn = data.draw(changes(first.max_iters))
        reference_schedule = _schedule(case, drawn)
        reference = reference_schedule.values_range(0, reference_schedule.max_iters + 1,
                                                    case.metrics)
    except (ConfigError, MetricsError, ValueError):
        assume(False)
        return
    assume(reference)
    # A server that computed up to t keeps a keyframe there (after a query, as a rank's
    # plan does) ...
    t = data.draw(st.integers(0, len(reference) - 1))
    server = _schedule(case, drawn)
    interval = data.draw(st.sampled_from([1, 3, 512]))
    for timeline in server.timelines():
        if timeline is not None:
            timeline.interval = interval
    server.values_range(data.draw(st.integers(0, t)), t + 1, case.metrics)
    keyframe = server.keyframe(t, case.metrics)
    assert keyframe is not None
    # ... which travels as the stores keep it (canonical JSON) ...
    stored = json.loads(canonical_json(keyframe))
    # ... and another server continues from it without replaying from 0.
    cold = _schedule(case, drawn)
    assert cold.seed(stored) == t
    assert cold.replay_distance(t) == 0
    got = cold.values_range(t, len(reference), case.metrics)
    assert bits(got) == bits(reference[t:])


def test_a_keyframe_that_does_not_fit_the_schedule_is_refused_and_keeps_nothing() -> None:
    spec = build_job_spec([{"type": "CosineAnnealingLR", "T_max": 100, "by_epoch": False}],
                          [{"lr": 0.1, "momentum": 0.9}], max_iters=100)
    schedule = Schedule(spec)
    schedule.values_range(0, 60, {})
    good = schedule.keyframe(50, {})
    assert good is not None
    bad_cases = [
        {**good, "iteration": 51},  # the states are at 50
        {**good, "states": {}},
        {"iteration": 50},
        {**good, "extra": 1},
        {**good, "states": {"0": {**good["states"]["0"], "values": {"lr": [0.1, 0.2]}}}},
        {**good, "states": {"0": {**good["states"]["0"], "last_step": ["x"]}}},
        {**good, "states": {"0": {**good["states"]["0"], "plateau": {"0": [1, 2, 3]}}}},
        {**good, "states": {"0": {**good["states"]["0"], "iteration": 10**9}}},
    ]
    both = schedule.keyframe(55, {}, since=50)
    assert both is not None and both["since"] == good
    bad_cases += [
        {**both, "since": {**good, "iteration": 49}},  # its states are at 50
        {**both, "since": {**both["since"], "extra": 1}},
        {**both, "since": schedule.keyframe(58, {})},  # not before the keyframe
        {**both, "since": {**good, "states": {}}},
        {**both, "since": [1]},
    ]
    for bad in bad_cases:
        fresh = Schedule(spec)
        with pytest.raises(ValueError):
            fresh.seed(bad)
        assert fresh.replay_distance(50) == 50  # nothing kept
    fresh = Schedule(spec)
    assert fresh.seed(both) == 55
    assert fresh.state_distance(50) == 0 and fresh.state_distance(57) == 2
    assert fresh.values_range(50, 60, {}) == schedule.values_range(50, 60, {})


def test_memory_per_timeline_stays_bounded_however_far_the_job_runs() -> None:
    spec = build_job_spec(
        [{"type": "LinearLR", "start_factor": 0.01, "by_epoch": False, "end": 100},
         {"type": "CosineAnnealingLR", "T_max": 10**6, "by_epoch": False, "begin": 100},
         {"type": "CosineAnnealingMomentum", "T_max": 10**6, "by_epoch": False}],
        [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.9}], max_iters=10**6)
    schedule = Schedule(spec)
    sizes = []
    for start in range(0, 200_000, 256):  # a rank's plans, one after another
        schedule.values_range(start, start + 256, {})
        sizes.append(schedule.nbytes())
    assert max(sizes) <= 64 * 1024
    assert sizes[-1] <= sizes[len(sizes) // 10]  # flat, not growing with t


# -- the service: cold servers continue from the stored keyframe ---------------------

CONFIG = [
    {"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "end": 50},
    {"type": "CosineAnnealingLR", "T_max": 10**6, "by_epoch": False, "begin": 50},
    {"type": "CosineAnnealingMomentum", "T_max": 10**6, "by_epoch": False, "eta_min": 0.8},
]
GROUPS = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.05, "momentum": 0.95}]
SPEC = {"param_scheduler": CONFIG, "initial_values": GROUPS, "max_iters": 10**6}


def _service(store: Any, **options: Any) -> SchedulerService:
    return SchedulerService(store, **options)


def _rows(plan: Any) -> GroupRows:
    return [list(map(dict, row)) for row in plan.values]


async def _drain(service: SchedulerService) -> None:
    """Wait for the keyframes being stored in the background."""
    import asyncio

    while service._background:
        await asyncio.gather(*service._background)


def _replayed(service: SchedulerService, job_id: str, t: int) -> int:
    return service._jobs[job_id].schedule.replay_distance(t)


@pytest.fixture(params=["embedded", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A function opening the same store again (a new server process would)."""
    if request.param == "embedded":
        yield lambda: EmbeddedJobStore(tmp_path)
    else:
        from paramsched.server.store import RedisJobStore

        url = request.getfixturevalue("redis_url")
        yield lambda: RedisJobStore(url)


def test_a_restarted_server_continues_a_long_job_from_its_stored_keyframe(
        open_store: Any, store_loop: Any) -> None:
    async def scenario() -> None:
        warm = _service(open_store(), keyframe_every=1024)
        await warm.attach("long", SPEC, world_size=1, rank=0, plan_size=256, run_id="r1")
        view = await warm.get("long")
        generation = view.record.generation
        # The rank trains far; its plans are computed from the server's own states.
        t = 0
        for t in range(0, 300_000, 256):
            plan = await warm.report("long", generation=generation, rank=0, iteration=t,
                                     plan_size=256)
        expected = _rows(plan)
        await _drain(warm)
        # Another server (a restart, a replica) answers the next report from the keyframe.
        cold = _service(open_store())
        again = await cold.report("long", generation=generation, rank=0, iteration=t,
                                  plan_size=256)
        assert bits(_rows(again)) == bits(expected)
        assert _replayed(cold, "long", t) <= 2 * 1024 + 256

    store_loop.run(scenario())


def test_a_checkpoint_carries_its_keyframe_into_an_empty_store(tmp_path: Path,
                                                               store_loop: Any) -> None:
    async def scenario() -> None:
        first = _service(EmbeddedJobStore(tmp_path / "a"))
        await first.attach("ckpt", SPEC, world_size=1, rank=0, plan_size=256, run_id="r1")
        generation = (await first.get("ckpt")).record.generation
        t = 0
        for t in range(0, 200_000, 256):
            await first.report("ckpt", generation=generation, rank=0, iteration=t,
                               plan_size=256)
        state = await first.get_state("ckpt", t)
        assert json.loads(json.loads(state)["payload"])["keyframe"]["iteration"] == t
        expected = await first.values("ckpt", t, t + 256)
        empty = _service(EmbeddedJobStore(tmp_path / "b"))
        _view, plan, resumed = await empty.load_state("ckpt", state, plan_size=256,
                                                      world_size=1, run_id="r2")
        assert resumed
        assert bits(_rows(plan)) == bits(_rows(expected))
        assert _replayed(empty, "ckpt", t) == 0

    store_loop.run(scenario())


def test_an_evicted_job_loads_again_from_its_keyframe_not_from_zero(tmp_path: Path,
                                                                   store_loop: Any) -> None:
    async def scenario() -> None:
        service = _service(EmbeddedJobStore(tmp_path), cache_size=2, keyframe_every=512)
        generations = {}
        for name in ("a", "b", "c"):
            await service.attach(name, SPEC, world_size=1, rank=0, plan_size=256,
                                 run_id="r1")
            generations[name] = (await service.get(name)).record.generation
        for t in range(0, 20_000, 256):
            for name in ("a", "b", "c"):  # round robin over more jobs than the cache holds
                await service.report(name, generation=generations[name], rank=0,
                                     iteration=t, plan_size=256)
                await _drain(service)
                assert _replayed(service, name, t) <= 512 + 256
        assert len(service._jobs) <= 2

    store_loop.run(scenario())


def test_skip_held_plans_continue_the_held_one_and_a_cold_server_replays_nothing(
        open_store: Any, store_loop: Any) -> None:
    """A rank that holds [t, held) gets [held, t + plan_size) only, equal bit for bit to
    the tail of the whole plan; the keyframe stored is the plan's last state, so the
    next server (a restart, a replica) computes the next plan without replaying."""
    async def scenario() -> None:
        warm = _service(open_store(), keyframe_every=256)
        await warm.attach("held", SPEC, world_size=1, rank=0, plan_size=256, run_id="r1")
        generation = (await warm.get("held")).record.generation
        held = 256
        for t in range(128, 40_000, 128):
            plan = await warm.report("held", generation=generation, rank=0, iteration=t,
                                     plan_size=256, held_until=held, skip_held=True)
            assert plan.start == held and len(plan.values) == t + 256 - held
            held = t + 256
        whole = await warm.values("held", t, held)
        assert bits(_rows(plan)) == bits(_rows(whole))[plan.start - t:]
        await _drain(warm)
        kept = await warm.store.keyframe("held")
        assert kept is not None and held - 1 - kept.iteration < 256
        # The keyframe holds the states where the rank is, too: a cold server
        # checkpoints it there, or answers a report without skip_held, from them.
        probe = _service(open_store())
        record = await probe._get_record("held")
        entry = await probe._load(record)
        await probe._warm(entry, record)
        assert entry.schedule.state_distance(t) <= 256  # (keyframe_every)
        assert probe.store is not warm.store
        def carried(state: str) -> Any:
            return json.loads(json.loads(state)["payload"])["keyframe"]

        assert carried(await probe.get_state("held", t + 5)) == carried(
            await warm.get_state("held", t + 5))
        whole_again = await probe.report("held", generation=generation, rank=0,
                                         iteration=t + 5, plan_size=16)
        assert bits(_rows(whole_again)) == bits(_rows(await warm.values("held", t + 5,
                                                                        t + 21)))
        cold = _service(open_store())
        t += 128
        again = await cold.report("held", generation=generation, rank=0, iteration=t,
                                  plan_size=256, held_until=held, skip_held=True)
        assert again.start == held
        assert _replayed(cold, "held", held) <= 256
        expected = await warm.values("held", held, t + 256)
        assert bits(_rows(again)) == bits(_rows(expected))
        # A rank past its plan gets a whole plan; one that holds all it asks for, none.
        behind = await cold.report("held", generation=generation, rank=0, iteration=t + 10,
                                   plan_size=8, held_until=t, skip_held=True)
        assert behind.start == t + 10 and len(behind.values) == 8
        ahead = await cold.report("held", generation=generation, rank=0, iteration=t + 10,
                                  plan_size=8, held_until=t + 256, skip_held=True)
        assert ahead.start == t + 18 and ahead.values == []

    store_loop.run(scenario())


def test_a_report_far_past_every_plan_is_refused_with_resource_exhausted(
        tmp_path: Path, store_loop: Any) -> None:
    from paramsched.server.errors import ResourceExhausted

    async def scenario() -> None:
        service = _service(EmbeddedJobStore(tmp_path))
        await service.attach("far", SPEC, world_size=1, rank=0, plan_size=256, run_id="r1")
        generation = (await service.get("far")).record.generation
        with pytest.raises(ResourceExhausted, match="max_plan_size"):
            await service.report("far", generation=generation, rank=0,
                                 iteration=10**6 - 5, plan_size=256)
        # Within one plan of the frontier is a rank's own progress: answered.
        plan = await service.report("far", generation=generation, rank=0, iteration=256,
                                    plan_size=256)
        assert plan.start == 256

    store_loop.run(scenario())
