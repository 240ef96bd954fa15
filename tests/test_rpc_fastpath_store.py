"""The Redis store's report fast path: concurrent reports share pipelines (one round
trip, one ``WAIT`` for many), and each caller still gets exactly its own answer.

Real Redis (the session's ``redis-server``), no mocks: the contract suite checks what a
report does; these check that sharing a pipeline changes none of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from paramsched.server.store import (
    IncarnationMismatch,
    JobNotFound,
    RedisJobStore,
    Reported,
    StaleGeneration,
    StoreUnavailable,
)

from test_store_contract import SPEC_HASH, make_record

RANKS = 16


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every write to a Redis connection (a round trip), counted from now on."""
    writes: list[int] = []
    connection = aioredis.connection.AbstractConnection
    send = connection.send_packed_command

    async def counting(self: Any, *args: Any, **options: Any) -> Any:
        writes.append(1)
        return await send(self, *args, **options)

    monkeypatch.setattr(connection, "send_packed_command", counting)
    return writes


def test_concurrent_reports_share_round_trips_and_each_gets_its_own_record(
    redis_url: str, store_loop: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisJobStore(redis_url, wait_replicas=0)

    async def scenario() -> list[Reported]:
        await store.create(make_record(world_size=RANKS))
        await store.report("job-a", generation=1, rank=0, iteration=0)  # loads the script
        writes = _count_writes(monkeypatch)
        records = await asyncio.gather(*(
            store.report("job-a", generation=1, rank=rank, iteration=100 + rank,
                         issue_until=200 + rank, known_spec_hash=SPEC_HASH)
            for rank in range(RANKS)))
        monkeypatch.undo()
        assert len(writes) < RANKS  # they shared pipelines
        await store.close()
        return records

    records = store_loop.run(scenario())
    for rank, record in enumerate(records):
        # Each reply is the record just after that report's own script ran (scripts
        # run one after another, in order): its own progress is there.
        assert record.progress[rank] == 100 + rank
        assert record.issued_until >= 200 + rank
        assert record.spec is None
    versions = [r.version for r in records]
    assert len(set(versions)) == RANKS  # every report bumped the version once


def test_a_refused_report_in_a_shared_pipeline_fails_alone(
    redis_url: str, store_loop: asyncio.Runner
) -> None:
    store = RedisJobStore(redis_url, wait_replicas=0)

    async def scenario() -> list[Any]:
        await store.create(make_record(world_size=RANKS))
        return await asyncio.gather(
            store.report("job-a", generation=1, rank=1, iteration=5, issue_until=10),
            store.report("job-a", generation=7, rank=2, iteration=5, issue_until=10),
            store.report("job-a", generation=1, rank=3, iteration=5, incarnation="other"),
            store.report("job-gone", generation=1, rank=0, iteration=1),
            store.report("job-a", generation=1, rank=4, iteration=6, issue_until=11),
            return_exceptions=True)

    ok1, stale, mismatch, missing, ok2 = store_loop.run(scenario())
    assert isinstance(ok1, Reported) and ok1.progress[1] == 5
    assert isinstance(stale, StaleGeneration) and stale.current == 1
    assert isinstance(mismatch, IncarnationMismatch)
    assert isinstance(missing, JobNotFound)
    assert isinstance(ok2, Reported) and ok2.progress[4] == 6 and 2 not in ok2.progress
    store_loop.run(store.close())


def _reports_after(redis_url: str, store_loop: asyncio.Runner,
                   disturb: Callable[[redis.Redis], Any]) -> list[Reported]:
    """Every rank's report, concurrent, after one report and then ``disturb`` done to
    the Redis (by another client)."""
    store = RedisJobStore(redis_url, wait_replicas=0)

    async def scenario() -> list[Reported]:
        await store.create(make_record(world_size=RANKS))
        await store.report("job-a", generation=1, rank=0, iteration=1)
        with redis.Redis.from_url(redis_url) as client:
            disturb(client)
        records = await asyncio.gather(*(
            store.report("job-a", generation=1, rank=rank, iteration=10, issue_until=20)
            for rank in range(RANKS)))
        await store.close()
        return records

    records = store_loop.run(scenario())
    assert all(r.progress[rank] == 10 for rank, r in enumerate(records))
    return records


def test_reports_after_the_redis_lost_its_scripts_load_them_again(
    redis_url: str, store_loop: asyncio.Runner
) -> None:
    # As a Redis restart without persistence of scripts.
    _reports_after(redis_url, store_loop, lambda client: client.script_flush())


def test_an_unconfirmed_wait_fails_the_reports_that_wait_and_only_those(
    redis_url: str, store_loop: asyncio.Runner
) -> None:
    # One replica asked for, none there: WAIT answers 0 after its timeout.
    store = RedisJobStore(redis_url, wait_replicas=1, wait_timeout=0.05)

    async def scenario() -> list[Any]:
        client = redis.Redis.from_url(redis_url)
        client.delete(*store.job_keys("job-a"))
        client.close()
        store_without_wait = RedisJobStore(redis_url, wait_replicas=0)
        await store_without_wait.create(make_record(world_size=RANKS))
        await store_without_wait.close()
        results = await asyncio.gather(
            store.report("job-a", generation=1, rank=1, iteration=5, issue_until=10),
            store.report("job-a", generation=1, rank=2, iteration=5),  # progress only
            store.report("job-a", generation=1, rank=3, iteration=5, decision=(0, None)),
            return_exceptions=True)
        await store.close()
        return results

    planned, progress_only, decided = store_loop.run(scenario())
    assert isinstance(planned, StoreUnavailable) and "replica" in str(planned)
    assert isinstance(decided, StoreUnavailable)
    assert isinstance(progress_only, Reported) and progress_only.progress[2] == 5


def test_a_cancelled_report_does_not_disturb_the_others(
    redis_url: str, store_loop: asyncio.Runner
) -> None:
    store = RedisJobStore(redis_url, wait_replicas=0)

    async def scenario() -> tuple[list[Reported], Reported]:
        await store.create(make_record(world_size=RANKS))
        reports = [asyncio.ensure_future(store.report(
            "job-a", generation=1, rank=rank, iteration=3, issue_until=4))
            for rank in range(RANKS)]
        await asyncio.sleep(0)
        reports[5].cancel()
        done = [await r for i, r in enumerate(reports) if i != 5]
        after = await store.report("job-a", generation=1, rank=0, iteration=4)
        await store.close()
        return done, after

    done, after = store_loop.run(scenario())
    assert len(done) == RANKS - 1
    assert after.progress[0] == 4 and after.issued_until == 4


def test_reports_heal_a_connection_the_redis_closed(
    redis_url: str, store_loop: asyncio.Runner
) -> None:
    def close_every_connection(client: redis.Redis) -> None:
        # As a restart or a proxy's idle timeout: the reports' own connection is one.
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1

    _reports_after(redis_url, store_loop, close_every_connection)


def test_a_redis_that_stops_answering_is_unavailable_then_used_again(
    redis_url: str, store_loop: asyncio.Runner
) -> None:
    store = RedisJobStore(redis_url, wait_replicas=0, socket_timeout=0.2)

    async def scenario() -> tuple[BaseException | Reported, Reported]:
        await store.create(make_record(world_size=RANKS))
        await store.report("job-a", generation=1, rank=0, iteration=1)
        client = redis.Redis.from_url(redis_url)
        client.execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # a hung Redis
        try:
            hung = await asyncio.gather(
                store.report("job-a", generation=1, rank=1, iteration=2, issue_until=3),
                return_exceptions=True)
        finally:
            client.execute_command("CLIENT", "UNPAUSE")
            client.close()
        after = await store.report("job-a", generation=1, rank=1, iteration=3, issue_until=4)
        await store.close()
        return hung[0], after

    hung, after = store_loop.run(scenario())
    assert isinstance(hung, StoreUnavailable) and "socket_timeout=0.2" in str(hung), hung
    assert after.progress[1] == 3 and after.issued_until == 4


def test_reports_go_on_after_the_event_loop_of_the_first_ones_closed(redis_url: str) -> None:
    store = RedisJobStore(redis_url, wait_replicas=0)
    first = asyncio.new_event_loop()  # (as a store outliving the loop it was used on)
    creator = RedisJobStore(redis_url, wait_replicas=0)
    first.run_until_complete(creator.create(make_record(world_size=RANKS)))
    first.run_until_complete(creator.close())
    # Only the reports' connection belongs to the first loop (the pool's own connections
    # of a closed loop are redis-py's to mend: its disconnect fails then).
    first.run_until_complete(store.report("job-a", generation=1, rank=0, iteration=1))
    first.close()
    with asyncio.Runner() as runner:
        record = runner.run(store.report("job-a", generation=1, rank=1, iteration=2))
        runner.run(store.close())
    assert record.progress == {0: 1, 1: 2}
