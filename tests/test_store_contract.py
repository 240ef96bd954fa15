"""The JobStore contract (``server/store/base.py``), run against every store.

``TestJobStoreContract`` runs once per store (the ``job_store`` fixture: "embedded"
and "redis", a real redis-server). The classes after it pin down what only one
backend can show: Redis hash slots, AOF durability and outages; sqlite reopening,
locking and several OS processes on one data dir.
"""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from paramsched.server.store import (
    ChangeConflict,
    EmbeddedJobStore,
    IncarnationMismatch,
    JobNotFound,
    JobRecord,
    JobStore,
    Keyframe,
    RankOutOfRange,
    RedisJobStore,
    StaleGeneration,
    StoreUnavailable,
    TooEarly,
    WorldSizeConflict,
    content_hash,
    open_store,
)
from paramsched.server.store.embedded import DB_FILENAME

from redis_harness import RedisServer

Opener = Callable[[], JobStore]

SPEC: dict[str, Any] = {
    "schedulers": [
        {"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "begin": 0, "end": 500},
        {"type": "CosineAnnealingLR", "T_max": 12, "by_epoch": True, "begin": 1, "end": 13},
    ],
    "param_groups": [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}],
    "epoch_length": 100,
    "max_epochs": 13,
}
SPEC_HASH = content_hash(SPEC)

# Floats that a decimal or float32 detour, or Lua arithmetic, would not keep exactly.
TRICKY_FLOATS = [0.1 + 0.2, 1e-300, 5e-324, 1 / 3, 1.7976931348623157e308, -0.0, 2.0**53 + 2]


def make_record(job_id: str = "job-a", **changes: Any) -> JobRecord:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "spec": SPEC,
        "spec_hash": SPEC_HASH,
        "world_size": 4,
        "created_at": 1_700_000_000.123456,
    }
    fields.update(changes)
    return JobRecord(**fields)


def bits(x: float) -> str:
    """Compare floats bit for bit (so -0.0 != 0.0 and nothing is 'close enough')."""
    return x.hex()


async def load(store: JobStore, job_id: str = "job-a", **changes: Any) -> tuple[JobRecord, bool]:
    """``load_state`` with defaults: a checkpoint of SPEC at iteration 300."""
    args: dict[str, Any] = {
        "spec": SPEC,
        "spec_hash": SPEC_HASH,
        "decisions": {0: None, 1: {"acc": 0.5}},
        "progress": {0: 300, 1: 290},
        "min_generation": 2,
        "state_hash": "state-300",
        "world_size": 4,
        "created_at": 1_700_000_500.5,
    }
    args.update(changes)
    return await store.load_state(job_id, **args)


class TestJobStoreContract:
    """What every JobStore MUST do; each test runs on each store."""

    # -- create / get / list / delete ---------------------------------------------

    def test_create_stores_the_record_and_get_returns_it(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            record = make_record(progress={0: 5}, decisions={0: {"loss": 1.5}, 1: None})
            stored, created = await job_store.create(record)
            assert created is True
            assert stored == record
            assert await job_store.get("job-a") == record

        store_loop.run(scenario())

    def test_get_of_an_unknown_job_is_none(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        assert store_loop.run(job_store.get("nobody")) is None

    def test_create_is_idempotent_and_returns_the_existing_job(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            first, _ = await job_store.create(make_record())
            other = make_record(spec={"other": 1}, spec_hash="other", world_size=8)
            stored, created = await job_store.create(other)
            assert created is False
            assert stored == first  # the existing job, with its spec, unchanged
            assert await job_store.get("job-a") == first

        store_loop.run(scenario())

    def test_list_returns_jobs_by_id_filtered_by_prefix(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        ids = ["team-b/run2", "team-a/run1", "team-a/run10", "team-a/run2", "team-ab", "zeta"]

        async def scenario() -> None:
            for job_id in ids:
                await job_store.create(make_record(job_id))
            everything = await job_store.list()
            assert [r.job_id for r in everything] == sorted(ids)
            assert all(r.spec == SPEC for r in everything)
            team_a = await job_store.list(prefix="team-a/")
            assert [r.job_id for r in team_a] == ["team-a/run1", "team-a/run10", "team-a/run2"]
            assert await job_store.list(prefix="nope") == []

        store_loop.run(scenario())

    def test_list_pages_with_after_and_limit(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        ids = [f"job-{i:02d}" for i in range(23)] + ["other-1"]

        async def scenario() -> None:
            for job_id in ids:
                await job_store.create(make_record(job_id))
            seen: list[str] = []
            after = ""
            while True:
                page = await job_store.list(prefix="job-", after=after, limit=5)
                seen += [r.job_id for r in page]
                if len(page) < 5:
                    break
                after = page[-1].job_id
            assert seen == [f"job-{i:02d}" for i in range(23)]
            # ``after`` below the prefix range starts at the prefix; above, ends it.
            assert [r.job_id for r in await job_store.list("job-", "a", 2)] == [
                "job-00",
                "job-01",
            ]
            assert await job_store.list(prefix="job-", after="job-99") == []
            assert await job_store.list(limit=0) == []

        store_loop.run(scenario())

    def test_list_orders_non_ascii_ids_by_code_point(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        ids = ["a", "Z", "é", "日本/1", "日本/2", "a\u00ff", "a~", "🙂"]

        async def scenario() -> None:
            for job_id in ids:
                await job_store.create(make_record(job_id))
            assert [r.job_id for r in await job_store.list()] == sorted(ids)
            assert [r.job_id for r in await job_store.list(prefix="日本")] == ["日本/1", "日本/2"]
            assert [r.job_id for r in await job_store.list(prefix="a")] == ["a", "a~", "a\u00ff"]

        store_loop.run(scenario())

    def test_delete_removes_the_job_and_says_whether_it_existed(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(progress={0: 3}, decisions={0: None}))
            await job_store.create(make_record("job-b"))
            assert await job_store.delete("job-a") is True
            assert await job_store.delete("job-a") is False
            assert await job_store.get("job-a") is None
            assert [r.job_id for r in await job_store.list()] == ["job-b"]
            with pytest.raises(JobNotFound):
                await job_store.report("job-a", generation=1, rank=0, iteration=1)
            # A new job under the same id starts empty: no progress or decisions left over.
            fresh, created = await job_store.create(make_record())
            assert created and fresh.progress == {} and fresh.decisions == {}
            assert await job_store.get("job-a") == make_record()

        store_loop.run(scenario())

    # -- keyframes ------------------------------------------------------------------

    def test_a_keyframe_is_kept_per_incarnation_and_generation_and_only_moves_forward(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            assert await job_store.keyframe("job-a") is None
            assert not await job_store.save_keyframe("job-a", Keyframe("i1", 1, 5, "{}"))
            await job_store.create(make_record(incarnation="i1"))
            tricky = '{"x":[' + ",".join(repr(x) for x in TRICKY_FLOATS) + "]}"
            assert await job_store.save_keyframe("job-a", Keyframe("i1", 1, 512, tricky))
            assert await job_store.keyframe("job-a") == Keyframe("i1", 1, 512, tricky)
            # Not backwards, not at the same iteration, not for another identity.
            assert not await job_store.save_keyframe("job-a", Keyframe("i1", 1, 100, "{}"))
            assert not await job_store.save_keyframe("job-a", Keyframe("i1", 1, 512, "{}"))
            assert not await job_store.save_keyframe("job-a", Keyframe("i2", 1, 900, "{}"))
            assert not await job_store.save_keyframe("job-a", Keyframe("i1", 2, 900, "{}"))
            assert await job_store.save_keyframe("job-a", Keyframe("i1", 1, 1024, "{}"))
            assert (await job_store.keyframe("job-a")).iteration == 1024  # type: ignore[union-attr]
            # A new generation may start lower: the old keyframe is not its own.
            await load(job_store, min_generation=2, incarnation="i1")
            generation = (await job_store.get("job-a")).generation  # type: ignore[union-attr]
            assert await job_store.save_keyframe("job-a", Keyframe("i1", generation, 300, "{}"))
            assert await job_store.keyframe("job-a") == Keyframe("i1", generation, 300, "{}")
            # The keyframe goes with the job; a job created again starts without one.
            assert await job_store.delete("job-a")
            assert await job_store.keyframe("job-a") is None
            await job_store.create(make_record(incarnation="i3"))
            assert await job_store.keyframe("job-a") is None

        store_loop.run(scenario())

    # -- retention --------------------------------------------------------------------

    def test_finished_at_is_set_once_and_cleared_by_a_change_or_a_resume(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            r = await job_store.report("job-a", generation=1, rank=0, iteration=5)
            assert r.finished_at == 0.0
            r = await job_store.report("job-a", generation=1, rank=0, iteration=9,
                                       finished_at=1000.5)
            assert r.finished_at == 1000.5
            r = await job_store.report("job-a", generation=1, rank=1, iteration=9,
                                       finished_at=2000.0)
            assert r.finished_at == 1000.5  # the first end counts
            assert (await job_store.get("job-a")).finished_at == 1000.5  # type: ignore[union-attr]
            r = await job_store.reschedule("job-a", generation=1, expected_changes=0,
                                           change={"from_iteration": 20},
                                           audit_entry={"action": "extend"})
            assert r.finished_at == 0.0
            await job_store.report("job-a", generation=1, rank=0, iteration=30, finished_at=3.0)
            record, _ = await load(job_store)
            assert record.finished_at == 0.0

        store_loop.run(scenario())

    def test_delete_finished_before_removes_only_jobs_finished_by_then(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            for name in ("old", "new", "live"):
                await job_store.create(make_record(name))
            await job_store.report("old", generation=1, rank=0, iteration=9, finished_at=100.0)
            await job_store.report("new", generation=1, rank=0, iteration=9, finished_at=900.0)
            assert not await job_store.delete("live", finished_before=500.0)
            assert not await job_store.delete("new", finished_before=500.0)
            assert not await job_store.delete("nobody", finished_before=500.0)
            assert await job_store.delete("old", {"action": "expire"}, finished_before=500.0)
            assert sorted(r.job_id for r in await job_store.list()) == ["live", "new"]
            assert (await job_store.audit("old"))[-1] == {"action": "expire"}
            assert await job_store.count() == 2

        store_loop.run(scenario())

    def test_count_counts_ids_under_a_prefix_up_to_a_limit(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            for name in ("team-a-1", "team-a-2", "team-a-3", "team-b-1", "team-"):
                await job_store.create(make_record(name))
            assert await job_store.count("team-a-") == 3
            assert await job_store.count("team-a-", limit=2) == 2
            assert await job_store.count("team-") == 5
            assert await job_store.count("nope") == 0
            await job_store.delete("team-a-2")
            assert await job_store.count("team-a-") == 2

        store_loop.run(scenario())

    # -- report -------------------------------------------------------------------

    def test_report_keeps_the_highest_iteration_per_rank(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            await job_store.report("job-a", generation=1, rank=0, iteration=10)
            await job_store.report("job-a", generation=1, rank=1, iteration=7)
            late = await job_store.report("job-a", generation=1, rank=0, iteration=4)
            assert late.progress == {0: 10, 1: 7}
            record = await job_store.report("job-a", generation=1, rank=1, iteration=12)
            assert record.progress == {0: 10, 1: 12}

        store_loop.run(scenario())

    def test_report_stores_the_first_decision_of_an_epoch_only(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            r = await job_store.report(
                "job-a", generation=1, rank=0, iteration=100, decision=(0, {"acc": 0.7})
            )
            assert r.decisions == {0: {"acc": 0.7}}
            r = await job_store.report(
                "job-a", generation=1, rank=1, iteration=100, decision=(0, {"acc": 0.1})
            )
            assert r.decisions == {0: {"acc": 0.7}}
            # "No validation ran after epoch 1" is a decision too, and also final.
            r = await job_store.report("job-a", generation=1, rank=1, iteration=200,
                                       decision=(1, None))  # fmt: skip
            r = await job_store.report(
                "job-a", generation=1, rank=0, iteration=200, decision=(1, {"acc": 0.9})
            )
            assert r.decisions == {0: {"acc": 0.7}, 1: None}

        store_loop.run(scenario())

    def test_report_only_raises_issued_until(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            r = await job_store.report("job-a", generation=1, rank=0, iteration=0, issue_until=64)
            assert r.issued_until == 64
            r = await job_store.report("job-a", generation=1, rank=1, iteration=0, issue_until=32)
            assert r.issued_until == 64
            r = await job_store.report("job-a", generation=1, rank=0, iteration=1)
            assert r.issued_until == 64
            r = await job_store.report("job-a", generation=1, rank=0, iteration=2, issue_until=65)
            assert r.issued_until == 65

        store_loop.run(scenario())

    def test_report_bumps_the_version_every_time(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            created, _ = await job_store.create(make_record())
            versions = []
            for _ in range(3):  # even a report that changes no progress counts
                r = await job_store.report("job-a", generation=1, rank=0, iteration=5)
                versions.append(r.version)
            assert versions == [created.version + 1, created.version + 2, created.version + 3]

        store_loop.run(scenario())

    @pytest.mark.parametrize("generation", [1, 3])
    def test_report_from_another_generation_is_refused_and_changes_nothing(
        self, job_store: JobStore, store_loop: asyncio.Runner, generation: int
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(generation=2))
            before = await job_store.report("job-a", generation=2, rank=0, iteration=10)
            with pytest.raises(StaleGeneration) as caught:
                await job_store.report(
                    "job-a",
                    generation=generation,
                    rank=0,
                    iteration=99,
                    decision=(0, {"acc": 1.0}),
                    issue_until=500,
                )
            assert (caught.value.given, caught.value.current) == (generation, 2)
            assert await job_store.get("job-a") == before.record(before.spec, before.changes)

        store_loop.run(scenario())

    def test_report_on_an_unknown_job_raises_job_not_found(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            with pytest.raises(JobNotFound) as caught:
                await job_store.report("ghost", generation=1, rank=0, iteration=1)
            assert caught.value.job_id == "ghost"
            assert await job_store.get("ghost") is None

        store_loop.run(scenario())

    def test_report_omits_the_spec_the_caller_already_holds(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            known = await job_store.report(
                "job-a", generation=1, rank=0, iteration=1, known_spec_hash=SPEC_HASH
            )
            assert known.spec is None and known.spec_hash == SPEC_HASH
            assert known.progress == {0: 1}
            stale = await job_store.report(
                "job-a", generation=1, rank=0, iteration=2, known_spec_hash="old-hash"
            )
            assert stale.spec == SPEC
            unknown = await job_store.report("job-a", generation=1, rank=0, iteration=3)
            assert unknown.spec == SPEC

        store_loop.run(scenario())

    # -- load_state ---------------------------------------------------------------

    def test_load_state_creates_an_absent_job_at_min_generation(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            record, changed = await load(job_store, min_generation=5)
            assert changed is True
            assert record.generation == 5
            assert record.spec == SPEC and record.spec_hash == SPEC_HASH
            assert record.progress == {0: 300, 1: 290}
            assert record.decisions == {0: None, 1: {"acc": 0.5}}
            assert record.issued_until == 300
            assert record.resumed_from == "state-300"
            assert record.world_size == 4
            assert bits(record.created_at) == bits(1_700_000_500.5)
            assert await job_store.get("job-a") == record
            assert [r.job_id for r in await job_store.list()] == ["job-a"]

        store_loop.run(scenario())

    def test_load_state_replaces_the_state_and_bumps_the_generation(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(generation=3))
            for rank in range(4):
                await job_store.report(
                    "job-a", generation=3, rank=rank, iteration=900,
                    decision=(8, {"acc": 0.8}), issue_until=1000,
                )  # fmt: skip
            before = await job_store.get("job-a")
            assert before is not None
            record, changed = await load(job_store, min_generation=2)
            assert changed is True
            assert record.generation == 4  # stored + 1 beats min_generation
            assert record.progress == {0: 300, 1: 290}
            assert record.decisions == {0: None, 1: {"acc": 0.5}}
            assert record.issued_until == 300  # max(progress), not the old 1000
            assert record.resumed_from == "state-300"
            assert record.version > before.version
            assert bits(record.created_at) == bits(before.created_at)  # still the creation
            assert await job_store.get("job-a") == record
            with pytest.raises(StaleGeneration):
                await job_store.report("job-a", generation=3, rank=0, iteration=950)

        store_loop.run(scenario())

    def test_load_state_generation_is_at_least_min_generation(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(generation=2))
            record, _ = await load(job_store, min_generation=10)
            assert record.generation == 10
            record, _ = await load(job_store, state_hash="state-400", min_generation=10)
            assert record.generation == 11

        store_loop.run(scenario())

    def test_load_state_of_an_already_loaded_state_changes_nothing(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            first, changed = await load(job_store)
            assert changed is True
            # Every rank of the resumed run loads the same checkpoint: one bump only.
            again, changed = await load(job_store, progress={0: 1}, min_generation=9)
            assert changed is False
            assert again == first
            assert await job_store.get("job-a") == first
            empty, _ = await load(job_store, "job-b", progress={}, decisions={})
            assert empty.issued_until == 0 and empty.progress == {} and empty.decisions == {}

        store_loop.run(scenario())

    def test_load_state_with_unknown_world_size_keeps_the_stored_one(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(world_size=8))
            record, _ = await load(job_store, world_size=0)
            assert record.world_size == 8
            record, _ = await load(job_store, state_hash="state-400", world_size=16)
            assert record.world_size == 16

        store_loop.run(scenario())

    # -- copies and exactness -----------------------------------------------------

    def test_returned_records_are_copies(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            original = make_record(progress={0: 1}, decisions={0: {"acc": 0.5}})
            stored, _ = await job_store.create(original)
            pristine = original.copy()
            # Mutate the input and everything returned: nothing stored may change.
            original.progress[0] = 999
            original.spec["epoch_length"] = 1
            stored.progress[7] = 7
            stored.decisions[0]["acc"] = 0.0
            stored.spec["schedulers"].clear()
            got = await job_store.get("job-a")
            assert got == pristine
            assert got is not None
            got.spec["max_epochs"] = 0
            got.progress.clear()
            assert await job_store.get("job-a") == pristine
            (listed,) = await job_store.list()
            listed.decisions.clear()
            assert await job_store.get("job-a") == pristine

        store_loop.run(scenario())

    def test_floats_round_trip_bit_exactly(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        spec = {"param_groups": [{"lr": x} for x in TRICKY_FLOATS], "epoch_length": 1}
        metrics = {f"m{i}": x for i, x in enumerate(TRICKY_FLOATS)}

        async def scenario() -> None:
            await job_store.create(
                make_record(spec=spec, spec_hash=content_hash(spec), created_at=0.1 + 0.2)
            )
            await job_store.report("job-a", generation=1, rank=0, iteration=1,
                                   decision=(0, metrics))  # fmt: skip
            for record in [await job_store.get("job-a"), (await job_store.list())[0]]:
                assert record is not None
                assert record.spec is not None
                lrs = [group["lr"] for group in record.spec["param_groups"]]
                assert [bits(x) for x in lrs] == [bits(x) for x in TRICKY_FLOATS]
                got = record.decisions[0]
                assert got is not None
                assert {k: bits(v) for k, v in got.items()} == {
                    k: bits(v) for k, v in metrics.items()
                }
                assert bits(record.created_at) == bits(0.1 + 0.2)
            loaded, _ = await load(
                job_store, "job-b", decisions={3: metrics}, created_at=5e-324, spec=spec
            )
            assert loaded.decisions[3] == metrics
            assert bits(loaded.created_at) == bits(5e-324)

        store_loop.run(scenario())

    def test_large_integers_stay_exact(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        big = 2**53 - 1  # the largest integer a Lua number (a double) holds exactly

        async def scenario() -> None:
            await job_store.create(make_record(generation=big - 5))
            r = await job_store.report(
                "job-a", generation=big - 5, rank=3, iteration=big - 1, issue_until=big
            )
            assert (r.progress, r.issued_until) == ({3: big - 1}, big)
            r = await job_store.report("job-a", generation=big - 5, rank=3, iteration=big - 2)
            assert r.progress == {3: big - 1}
            loaded, _ = await load(job_store, min_generation=1)
            assert loaded.generation == big - 4

        store_loop.run(scenario())

    # -- concurrency --------------------------------------------------------------

    def test_concurrent_reports_lose_no_update(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        rng = random.Random(7)
        reports = [(rank, rng.randrange(1000)) for rank in range(10) for _ in range(5)]
        rng.shuffle(reports)

        async def scenario() -> None:
            created, _ = await job_store.create(make_record(world_size=10))
            await asyncio.gather(
                *(
                    job_store.report(
                        "job-a",
                        generation=1,
                        rank=rank,
                        iteration=iteration,
                        decision=(0, {"acc": float(i)}),
                        issue_until=iteration + 64,
                    )
                    for i, (rank, iteration) in enumerate(reports)
                )
            )
            record = await job_store.get("job-a")
            assert record is not None
            expected = {r: max(it for rr, it in reports if rr == r) for r in range(10)}
            assert record.progress == expected
            assert record.version == created.version + len(reports)
            assert record.issued_until == max(it for _, it in reports) + 64
            assert list(record.decisions) == [0]
            assert record.decisions[0] in [{"acc": float(i)} for i in range(len(reports))]

        store_loop.run(scenario())

    # -- changes (reschedule) and the audit trail ------------------------------------

    def test_reschedule_appends_a_change_and_its_audit_entry(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(issued_until=10))
            change = {"from_iteration": 10, "mode": "replace", "start_values": {"lr": 0.25}}
            entry = {"action": "set", "iteration": 10, "principal": "ops"}
            record = await job_store.reschedule("job-a", generation=1, expected_changes=0,
                                                change=change, audit_entry=entry)
            assert record.changes == [change] and record.num_changes == 1
            assert record.version == 2
            second = {"from_iteration": 12, "mode": "multiply", "start_values": {"lr": 0.5}}
            await job_store.reschedule("job-a", generation=1, expected_changes=1,
                                       change=second, audit_entry={"action": "scale"})
            stored = await job_store.get("job-a")
            assert stored is not None and stored.changes == [change, second]
            assert [e["action"] for e in await job_store.audit("job-a")] == ["set", "scale"]

        store_loop.run(scenario())

    def test_reschedule_refuses_iterations_already_handed_out(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            await job_store.report("job-a", generation=1, rank=0, iteration=4, issue_until=20)
            with pytest.raises(TooEarly) as info:
                await job_store.reschedule(
                    "job-a", generation=1, expected_changes=0,
                    change={"from_iteration": 19}, audit_entry={"action": "x"})
            assert info.value.issued_until == 20
            before = await job_store.get("job-a")
            assert before is not None and before.num_changes == 0
            assert await job_store.audit("job-a") == []
            await job_store.reschedule("job-a", generation=1, expected_changes=0,
                                       change={"from_iteration": 20}, audit_entry={})

        store_loop.run(scenario())

    def test_reschedule_refuses_iterations_inside_a_horizon_a_rank_holds(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        """A rank's reported ``held_until`` blocks changes even where ``issued_until``
        is lower (a store that lost the plan's record), and only grows."""
        async def scenario() -> None:
            await job_store.create(make_record())
            record = await job_store.report("job-a", generation=1, rank=0, iteration=4,
                                            issue_until=8, held_until=30)
            assert (record.issued_until, record.held_until) == (8, 30)
            record = await job_store.report("job-a", generation=1, rank=1, iteration=5,
                                            held_until=12)
            assert record.held_until == 30  # the highest claim of any rank stays
            with pytest.raises(TooEarly) as info:
                await job_store.reschedule(
                    "job-a", generation=1, expected_changes=0,
                    change={"from_iteration": 29}, audit_entry={"action": "x"})
            assert info.value.issued_until == 30
            assert await job_store.audit("job-a") == []
            await job_store.reschedule("job-a", generation=1, expected_changes=0,
                                       change={"from_iteration": 30}, audit_entry={})

        store_loop.run(scenario())

    def test_a_new_generation_starts_with_no_held_horizon(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(run_id="run-1"))
            await job_store.report("job-a", generation=1, rank=0, iteration=0,
                                   held_until=500)
            # A new run of a job without progress: generation + 1.
            joined, outcome = await job_store.join("job-a", run_id="run-2", world_size=4,
                                                   rank=0, issue_until=10)
            assert outcome == "new_run" and joined.held_until == 0
            await job_store.report("job-a", generation=joined.generation, rank=0,
                                   iteration=0, held_until=700)
            resumed, _ = await load(job_store)
            assert resumed.generation > joined.generation and resumed.held_until == 0
            await job_store.reschedule("job-a", generation=resumed.generation,
                                       expected_changes=0, change={"from_iteration": 300},
                                       audit_entry={})

        store_loop.run(scenario())

    def test_reschedule_checks_generation_and_concurrent_changes(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            change = {"from_iteration": 0}
            with pytest.raises(StaleGeneration):
                await job_store.reschedule("job-a", generation=2, expected_changes=0,
                                           change=change, audit_entry={})
            with pytest.raises(ChangeConflict):
                await job_store.reschedule("job-a", generation=1, expected_changes=3,
                                           change=change, audit_entry={})
            with pytest.raises(JobNotFound):
                await job_store.reschedule("nobody", generation=1, expected_changes=0,
                                           change=change, audit_entry={})
            # Two changes computed against the same state: exactly one lands.
            results = await asyncio.gather(
                *(job_store.reschedule("job-a", generation=1, expected_changes=0,
                                       change={"from_iteration": i}, audit_entry={"n": i})
                  for i in range(5)), return_exceptions=True)
            assert sum(isinstance(r, JobRecord) for r in results) == 1
            assert all(isinstance(r, JobRecord | ChangeConflict) for r in results)

        store_loop.run(scenario())

    def test_report_omits_changes_the_caller_already_holds(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            await job_store.reschedule("job-a", generation=1, expected_changes=0,
                                       change={"from_iteration": 0}, audit_entry={})
            held = await job_store.report("job-a", generation=1, rank=0, iteration=1,
                                          known_changes=1)
            assert held.changes is None and held.num_changes == 1
            stale = await job_store.report("job-a", generation=1, rank=0, iteration=1,
                                           known_changes=0)
            assert stale.changes == [{"from_iteration": 0}]

        store_loop.run(scenario())

    def test_the_audit_trail_outlives_the_job(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record())
            await job_store.reschedule("job-a", generation=1, expected_changes=0,
                                       change={"from_iteration": 0}, audit_entry={"a": 1})
            assert await job_store.delete("job-a", {"action": "delete"}) is True
            assert await job_store.delete("job-a", {"action": "delete"}) is False
            assert await job_store.audit("job-a") == [{"a": 1}, {"action": "delete"}]
            fresh, created = await job_store.create(make_record())
            assert created and fresh.changes == [] and fresh.num_changes == 0
            await job_store.append_audit("job-a", {"action": "again"})
            assert len(await job_store.audit("job-a")) == 3

        store_loop.run(scenario())

    def test_load_state_replaces_changes_and_restores_the_trail_into_a_fresh_store(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            changes = [{"from_iteration": 5}, {"from_iteration": 9}]
            trail = [{"action": "set"}, {"action": "decay"}]
            record, resumed = await load(job_store, changes=changes, audit_entries=trail,
                                         audit_entry={"action": "resume"})
            assert resumed and record.changes == changes and record.num_changes == 2
            assert await job_store.audit("job-a") == [*trail, {"action": "resume"}]
            # Loading another checkpoint into the same store: the trail is not doubled.
            again, _ = await load(job_store, state_hash="state-400", changes=[],
                                  audit_entries=trail, audit_entry={"action": "resume"})
            assert again.changes == [] and again.num_changes == 0
            assert [e["action"] for e in await job_store.audit("job-a")] == [
                "set", "decay", "resume", "resume"]

        store_loop.run(scenario())

    def test_two_stores_on_one_backend_share_jobs(
        self, open_job_store: Opener, store_loop: asyncio.Runner
    ) -> None:
        """Two store objects stand for two server processes on the same backend."""
        first, second = open_job_store(), open_job_store()

        async def scenario() -> None:
            await first.create(make_record())
            _, created = await second.create(make_record())
            assert created is False
            await asyncio.gather(
                *(
                    store.report("job-a", generation=1, rank=i % 4, iteration=i,
                                 decision=(0, {"by": float(i % 2)}))
                    for i, store in enumerate([first, second] * 25)
                )
            )  # fmt: skip
            a, b = await first.get("job-a"), await second.get("job-a")
            assert a == b
            assert a is not None
            assert a.progress == {0: 48, 1: 49, 2: 46, 3: 47}
            assert a.version == 1 + 50
            assert len(a.decisions) == 1
            assert await second.delete("job-a") is True
            assert await first.get("job-a") is None

        store_loop.run(scenario())


    # -- identity: incarnations, runs, ranks ---------------------------------------

    def test_report_of_another_incarnation_is_refused_and_changes_nothing(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(incarnation="aaaa"))
            before = await job_store.get("job-a")
            with pytest.raises(IncarnationMismatch) as info:
                await job_store.report("job-a", generation=1, rank=0, iteration=5,
                                       incarnation="bbbb")
            assert (info.value.given, info.value.current) == ("bbbb", "aaaa")
            assert await job_store.get("job-a") == before
            record = await job_store.report("job-a", generation=1, rank=0, iteration=5,
                                            incarnation="aaaa")
            assert record.progress == {0: 5} and record.incarnation == "aaaa"

        store_loop.run(scenario())

    def test_report_of_a_rank_outside_the_world_size_is_refused(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(world_size=2))
            with pytest.raises(RankOutOfRange):
                await job_store.report("job-a", generation=1, rank=2, iteration=1)
            record = await job_store.get("job-a")
            assert record is not None and record.progress == {}

        store_loop.run(scenario())

    def test_one_report_records_more_ranks_in_the_same_write(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(world_size=4))
            await job_store.report("job-a", generation=1, rank=2, iteration=9)
            record = await job_store.report("job-a", generation=1, rank=0, iteration=5,
                                            issue_until=21, more_progress={1: 6, 2: 3, 3: 0})
            # Each rank's highest iteration, as separate reports would have left it.
            assert record.progress == {0: 5, 1: 6, 2: 9, 3: 0}
            assert record.issued_until == 21
            assert record.version == 3  # (create, then two writes)
            stored = await job_store.get("job-a")
            assert stored is not None and stored.progress == record.progress

        store_loop.run(scenario())

    def test_a_report_with_one_rank_outside_the_world_size_changes_nothing(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(world_size=2))
            before = await job_store.report("job-a", generation=1, rank=0, iteration=1)
            with pytest.raises(RankOutOfRange) as refused:
                await job_store.report("job-a", generation=1, rank=0, iteration=7,
                                       issue_until=30, more_progress={1: 7, 5: 7})
            assert refused.value.rank == 5 and refused.value.world_size == 2
            after = await job_store.get("job-a")
            assert after is not None
            assert (after.progress, after.issued_until, after.version) == (
                before.progress, before.issued_until, before.version)

        store_loop.run(scenario())

    def test_join_by_the_jobs_run_records_the_rank_and_checks_the_world_size(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(run_id="run-1", world_size=0))
            record, outcome = await job_store.join("job-a", run_id="run-1", world_size=2,
                                                   rank=1, issue_until=64)
            assert outcome == "joined"
            assert (record.world_size, record.progress, record.issued_until) == (2, {1: 0}, 64)
            assert record.generation == 1
            with pytest.raises(WorldSizeConflict):
                await job_store.join("job-a", run_id="run-1", world_size=3, rank=0,
                                     issue_until=64)
            with pytest.raises(JobNotFound):
                await job_store.join("nobody", run_id="run-1", world_size=2, rank=0,
                                     issue_until=1)

        store_loop.run(scenario())

    def test_join_by_another_run_takes_over_a_job_without_progress_in_a_new_generation(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            await job_store.create(make_record(run_id="run-1", progress={0: 0}))
            entry = {"action": "run", "n": 1}
            record, outcome = await job_store.join("job-a", run_id="run-2", world_size=8,
                                                   rank=3, issue_until=10, audit_entry=entry)
            assert outcome == "new_run"
            assert (record.run_id, record.world_size, record.generation) == ("run-2", 8, 2)
            assert record.progress == {3: 0}
            assert await job_store.audit("job-a") == [entry]

        store_loop.run(scenario())

    def test_join_by_another_run_of_a_job_with_progress_changes_nothing(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            for job_id, children in (("job-a", {"progress": {0: 7}}),
                                     ("job-b", {"decisions": {0: None}})):
                await job_store.create(make_record(job_id, run_id="run-1", **children))
                before = await job_store.get(job_id)
                record, outcome = await job_store.join(job_id, run_id="run-2", world_size=4,
                                                       rank=0, issue_until=99)
                assert outcome == "resume_required"
                assert await job_store.get(job_id) == before == record

        store_loop.run(scenario())

    def test_load_state_keeps_an_existing_incarnation_and_gives_a_new_job_the_given_one(
        self, job_store: JobStore, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            fresh, _ = await load(job_store, "job-new", run_id="r1", incarnation="cafe")
            assert (fresh.incarnation, fresh.run_id) == ("cafe", "r1")
            await job_store.create(make_record(incarnation="beef"))
            loaded, resumed = await load(job_store, run_id="r2", incarnation="f00d")
            assert resumed and (loaded.incarnation, loaded.run_id) == ("beef", "r2")

        store_loop.run(scenario())


# -- Redis only ---------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, free to be stopped, killed or paused."""
    server = RedisServer(data_dir=tmp_path / "redis")
    yield server
    server.close()


class TestRedisJobStore:
    @pytest.mark.parametrize("job_id", ["job-a", "team/7", "a}b", "{x}", "日本"])
    def test_every_key_of_a_job_is_in_one_hash_slot(
        self, redis_url: str, store_loop: asyncio.Runner, job_id: str
    ) -> None:
        store = RedisJobStore(redis_url, prefix="ps")

        async def scenario() -> None:
            await store.create(make_record(job_id, progress={0: 1}))
            await store.report(job_id, generation=1, rank=1, iteration=2,
                               decision=(0, None))  # fmt: skip
            await store.reschedule(job_id, generation=1, expected_changes=0,
                                   change={"from_iteration": 2}, audit_entry={})
            await store.close()

        store_loop.run(scenario())
        client = redis.Redis.from_url(redis_url)
        try:
            keys = sorted(k.decode() for k in client.keys("ps:{*"))  # type: ignore[union-attr]
        finally:
            client.close()
        assert keys == sorted(store.job_keys(job_id))
        assert len(keys) == 5
        assert len({key_slot(k.encode()) for k in keys}) == 1

    def test_report_is_one_round_trip(
        self, redis_url: str, store_loop: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = RedisJobStore(redis_url)
        # What goes over the wire: each write (a round trip) and the commands in it.
        # (Reports travel as a batch of packed commands, not through execute_command.)
        writes: list[list[str]] = []
        connection = aioredis.connection.AbstractConnection
        send_packed = connection.send_packed_command

        def command_names(data: bytes) -> list[str]:
            names, at = [], 0
            while at < len(data):  # *N\r\n then N bulk strings $len\r\n...\r\n
                end = data.index(b"\r\n", at)
                count, at = int(data[at + 1:end]), end + 2
                for i in range(count):
                    end = data.index(b"\r\n", at)
                    size, at = int(data[at + 1:end]), end + 2
                    if i == 0:
                        names.append(data[at:at + size].decode().upper())
                    at += size + 2
            return names

        async def counting_send(self: Any, command: Any, *args: Any, **options: Any) -> Any:
            data = command if isinstance(command, bytes) else b"".join(command)
            writes.append(command_names(data))
            return await send_packed(self, command, *args, **options)

        async def scenario() -> JobRecord:
            await store.create(make_record())
            await store.report("job-a", generation=1, rank=0, iteration=1)  # loads the script
            monkeypatch.setattr(connection, "send_packed_command", counting_send)
            record = await store.report(
                "job-a", generation=1, rank=0, iteration=2, decision=(0, {"acc": 0.5}),
                issue_until=10, known_spec_hash=SPEC_HASH,
            )  # fmt: skip
            monkeypatch.undo()
            await store.close()
            return record

        record = store_loop.run(scenario())
        assert writes == [["EVALSHA"]]
        assert record.spec is None and record.progress == {0: 2} and record.issued_until == 10

    def test_list_skips_index_entries_whose_job_is_gone(
        self, redis_url: str, store_loop: asyncio.Runner
    ) -> None:
        store = RedisJobStore(redis_url)

        async def scenario() -> None:
            for i in range(6):
                await store.create(make_record(f"job-{i}"))
            client = redis.Redis.from_url(redis_url)
            client.delete(*store.job_keys("job-1"), *store.job_keys("job-2"))
            client.close()
            page = await store.list(limit=3)
            assert [r.job_id for r in page] == ["job-0", "job-3", "job-4"]
            await store.close()

        store_loop.run(scenario())

    @pytest.mark.parametrize("how", ["stop", "kill"])
    def test_acknowledged_writes_survive_a_redis_restart(
        self, private_redis: RedisServer, store_loop: asyncio.Runner, how: str
    ) -> None:
        store = RedisJobStore(private_redis.url)

        async def write() -> JobRecord:
            await store.create(make_record())
            await load(store, "job-b")
            return await store.report(
                "job-a", generation=1, rank=2, iteration=77,
                decision=(0, {"acc": 0.1 + 0.2}), issue_until=99,
            )  # fmt: skip

        acknowledged = store_loop.run(write())
        if how == "stop":
            private_redis.stop()
        else:
            private_redis.kill()  # SIGKILL: only what appendfsync=always fsync'ed remains
        private_redis.start()  # replays the AOF

        async def read() -> None:
            got = await store.get("job-a")  # the pooled connection died; it reconnects
            assert got is not None
            assert got.progress == acknowledged.progress
            assert got.decisions == acknowledged.decisions
            assert got.issued_until == 99 and got.version == acknowledged.version
            assert [r.job_id for r in await store.list()] == ["job-a", "job-b"]
            await store.close()

        store_loop.run(read())

    def test_unavailable_while_redis_is_down_then_usable_again(
        self, private_redis: RedisServer, store_loop: asyncio.Runner
    ) -> None:
        store = RedisJobStore(private_redis.url, socket_timeout=1.0)

        async def scenario() -> None:
            await store.create(make_record())
            private_redis.stop()
            for call in (
                store.get("job-a"),
                store.list(),
                store.create(make_record("job-b")),
                store.report("job-a", generation=1, rank=0, iteration=1),
                load(store, "job-c"),
                store.delete("job-a"),
            ):
                with pytest.raises(StoreUnavailable):
                    await call
            private_redis.start()
            record = await store.report("job-a", generation=1, rank=0, iteration=1)
            assert record.progress == {0: 1}
            await store.close()

        store_loop.run(scenario())

    def test_unavailable_while_redis_hangs(
        self, private_redis: RedisServer, store_loop: asyncio.Runner
    ) -> None:
        store = RedisJobStore(private_redis.url, socket_timeout=0.3)

        async def scenario() -> None:
            await store.create(make_record())
            private_redis.pause()
            try:
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await store.report("job-a", generation=1, rank=0, iteration=1)
                assert time.monotonic() - started < 5.0  # bounded by socket_timeout
            finally:
                private_redis.resume()
            record = await store.report("job-a", generation=1, rank=0, iteration=2)
            assert record.progress[0] == 2
            await store.close()

        store_loop.run(scenario())

    def test_open_store_picks_redis_when_a_url_is_given(
        self, redis_url: str, tmp_path: Path, store_loop: asyncio.Runner
    ) -> None:
        store = open_store(redis_url, tmp_path)
        assert isinstance(store, RedisJobStore)
        store_loop.run(store.close())
        assert not (tmp_path / DB_FILENAME).exists()


# -- embedded only ------------------------------------------------------------------


class TestEmbeddedJobStore:
    def test_jobs_survive_closing_and_reopening_the_store(
        self, tmp_path: Path, store_loop: asyncio.Runner
    ) -> None:
        async def scenario() -> None:
            store = EmbeddedJobStore(tmp_path / "nested" / "dir")
            await store.create(make_record())
            written = await store.report(
                "job-a", generation=1, rank=0, iteration=5, decision=(0, {"acc": 0.5})
            )
            await store.close()
            await store.close()  # idempotent
            with pytest.raises(StoreUnavailable):
                await store.get("job-a")
            reopened = EmbeddedJobStore(tmp_path / "nested" / "dir")
            assert await reopened.get("job-a") == written.record(written.spec, written.changes)
            await reopened.close()

        store_loop.run(scenario())

    def test_uses_a_wal_sqlite_file_in_the_data_dir(
        self, tmp_path: Path, store_loop: asyncio.Runner
    ) -> None:
        store = open_store(None, tmp_path)
        assert isinstance(store, EmbeddedJobStore)
        store_loop.run(store.close())
        conn = sqlite3.connect(tmp_path / DB_FILENAME)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()

    def test_a_locked_database_raises_store_unavailable(
        self, tmp_path: Path, store_loop: asyncio.Runner
    ) -> None:
        store = EmbeddedJobStore(tmp_path, busy_timeout=0.2)
        store_loop.run(store.create(make_record()))
        blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                store_loop.run(store.report("job-a", generation=1, rank=0, iteration=1))
            assert store_loop.run(store.get("job-a")) == make_record()  # reads still work
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        record = store_loop.run(store.report("job-a", generation=1, rank=0, iteration=1))
        assert record.progress == {0: 1}
        store_loop.run(store.close())

    def test_server_processes_on_one_data_dir_lose_no_update(
        self, tmp_path: Path, store_loop: asyncio.Runner
    ) -> None:
        store = EmbeddedJobStore(tmp_path)
        store_loop.run(store.create(make_record()))
        worker = textwrap.dedent(
            """
            import asyncio, sys
            from paramsched.server.store import EmbeddedJobStore

            async def main(rank: int) -> None:
                store = EmbeddedJobStore(sys.argv[1])
                for it in range(1, 41):
                    await store.report("job-a", generation=1, rank=rank % 2, iteration=it,
                                       decision=(it, {"rank": rank}))
                await store.close()

            asyncio.run(main(int(sys.argv[2])))
            """
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", worker, str(tmp_path), str(rank)])
            for rank in range(4)
        ]
        assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
        record = store_loop.run(store.get("job-a"))
        assert record is not None
        assert record.progress == {0: 40, 1: 40}
        assert record.version == 1 + 4 * 40
        assert sorted(record.decisions) == list(range(1, 41))
        store_loop.run(store.close())


def test_tricky_floats_really_are_tricky() -> None:
    """Guard the guard: these values do not survive a float32 or %.14g detour."""
    assert any(float(f"{x:.14g}") != x for x in TRICKY_FLOATS)
    assert 5e-324 > 0 and math.ulp(0.0) == 5e-324
