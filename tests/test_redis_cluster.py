"""The Redis store on a real 3-master Redis Cluster (``redis+cluster://`` URLs).

The cluster is started once for this module from ``redis-server --cluster-enabled yes``
processes (``redis_cluster_harness``). On it run: the whole ``JobStore`` contract suite
(the same test class as every other store), what only a cluster can show (a job's keys
in one slot, jobs spread over the masters, scripts reloaded on a master that lost
them, the index in its own slot) and a multi-rank job through a real
``paramsched serve --redis-url redis+cluster://...`` process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from failover_harness import check_ranks_agree, train_across_a_failover
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.server.store import JobStore, RedisJobStore, StoreUnavailable, open_store
from paramsched.server.store.redis_store import cluster_url

import test_store_contract as contract
from process_harness import ServerProcess
from redis_cluster_harness import RedisCluster
from test_service_grpc import PLATEAU, decode, engine_values, payload_of, spec_proto

Opener = Callable[[], JobStore]


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Three masters, all 16384 slots assigned, AOF on; shared by this module."""
    cluster = RedisCluster(data_dir=tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The module's cluster, emptied: ``redis+cluster://127.0.0.1:<a node>``."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def open_job_store(redis_cluster_url: str, store_loop: asyncio.Runner) -> Iterator[Opener]:
    """Overrides conftest's: every store this module opens is on the cluster."""
    opened: list[JobStore] = []

    def open_store() -> JobStore:
        opened.append(RedisJobStore(redis_cluster_url))
        return opened[-1]

    yield open_store
    for store in opened:
        store_loop.run(store.close())


class TestJobStoreContractOnRedisCluster(contract.TestJobStoreContract):
    """Every test of the JobStore contract, on ``RedisJobStore`` with a cluster URL."""


# -- what only a cluster shows ----------------------------------------------------------


def test_cluster_urls_select_the_cluster_client_with_the_plain_scheme(
    redis_cluster_url: str, tmp_path: Path, store_loop: asyncio.Runner
) -> None:
    assert cluster_url("redis+cluster://h:7000") == "redis://h:7000"
    assert cluster_url("rediss+cluster://u:p@h:7000/0") == "rediss://u:p@h:7000/0"
    assert cluster_url("redis://h:6379/0") is None
    store = open_store(redis_cluster_url, tmp_path)
    assert isinstance(store, RedisJobStore) and store.cluster
    assert isinstance(store._redis, AsyncRedisCluster)
    store_loop.run(store.close())


@pytest.mark.parametrize("job_id", ["job-a", "team/7", "a}b", "{x}", "日本"])
def test_every_key_of_a_job_is_in_one_slot_on_one_master(
    redis_cluster: RedisCluster, job_store: JobStore, store_loop: asyncio.Runner, job_id: str
) -> None:
    async def scenario() -> None:
        await job_store.create(contract.make_record(job_id, progress={0: 1}))
        await job_store.report(job_id, generation=1, rank=1, iteration=2, decision=(0, None))
        await job_store.reschedule(job_id, generation=1, expected_changes=0,
                                   change={"from_iteration": 2}, audit_entry={})

    store_loop.run(scenario())
    assert isinstance(job_store, RedisJobStore)
    holders = {
        port: keys for port, keys in redis_cluster.keys_by_master("paramsched:{*").items() if keys
    }
    assert list(holders.values()) == [sorted(job_store.job_keys(job_id))]
    slots = {redis_cluster.keyslot(key) for key in job_store.job_keys(job_id)}
    assert slots == {key_slot(job_store.job_keys(job_id)[0].encode())}


def test_jobs_spread_over_every_master_and_list_still_sees_them_all(
    redis_cluster: RedisCluster, job_store: JobStore, store_loop: asyncio.Runner
) -> None:
    ids = [f"job-{i:02d}" for i in range(30)]

    async def scenario() -> list[str]:
        for job_id in ids:
            await job_store.create(contract.make_record(job_id))
        first = await job_store.list(limit=7)
        rest = await job_store.list(after=first[-1].job_id, limit=100)
        assert await job_store.delete("job-05") is True
        return [r.job_id for r in first + rest] + [r.job_id for r in await job_store.list()]

    listed = store_loop.run(scenario())
    assert listed == ids + [i for i in ids if i != "job-05"]
    by_master = redis_cluster.keys_by_master("paramsched:{*}:job")
    assert all(len(keys) >= 3 for keys in by_master.values()), by_master
    # The index is one key, on the one master that serves its slot.
    index_holders = [p for p, keys in redis_cluster.keys_by_master("paramsched:jobs").items()
                     if keys]  # fmt: skip
    assert len(index_holders) == 1


def test_a_master_that_lost_the_scripts_gets_them_again(
    redis_cluster: RedisCluster, job_store: JobStore, store_loop: asyncio.Runner
) -> None:
    async def scenario() -> None:
        await job_store.create(contract.make_record("job-a"))
        await job_store.report("job-a", generation=1, rank=0, iteration=1)
        for port in redis_cluster.ports:  # a restarted or replaced master has none
            with redis.Redis(port=port) as node:
                node.script_flush()
        record = await job_store.report("job-a", generation=1, rank=0, iteration=2)
        assert record.progress == {0: 2}

    store_loop.run(scenario())


def test_more_concurrent_calls_than_connections_wait_instead_of_failing(
    redis_cluster_url: str, store_loop: asyncio.Runner
) -> None:
    store = RedisJobStore(redis_cluster_url, max_connections=4)

    async def scenario() -> None:
        await store.create(contract.make_record("job-a", world_size=8))
        await asyncio.gather(*(
            store.report("job-a", generation=1, rank=i % 8, iteration=i) for i in range(200)
        ))  # fmt: skip
        record = await store.get("job-a")
        assert record is not None and record.version == 201
        await store.close()

    store_loop.run(scenario())


def test_an_unreachable_cluster_is_store_unavailable(store_loop: asyncio.Runner) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    store = RedisJobStore(f"redis+cluster://127.0.0.1:{port}", socket_timeout=0.5)

    async def scenario() -> None:
        with pytest.raises(StoreUnavailable):
            await store.get("job-a")
        await store.close()

    store_loop.run(scenario())


# -- WAIT on the job's shard ----------------------------------------------------------


def test_writes_wait_for_the_replica_of_the_jobs_shard(
    tmp_path: Path, store_loop: asyncio.Runner
) -> None:
    """Script and WAIT go to the master of the job's slot on one connection: an answered
    write is on that shard's replica already, and a replica that cannot confirm (paused)
    makes the write StoreUnavailable instead of an answer a failover could lose."""
    with RedisCluster(masters=3, replicas=1, data_dir=tmp_path / "cluster") as cluster:
        default = RedisJobStore(cluster.url)  # waits for 1 replica: every shard has one
        strict = RedisJobStore(cluster.url, wait_replicas=1, wait_timeout=0.3)
        job_key = default.job_keys("job-a")[0]
        slot = cluster.keyslot(job_key)
        (master,) = [p for p in cluster.master_ports()
                     if any(start <= slot <= end for start, end in _slots_of(cluster, p))]
        (replica,) = cluster.replicas_of(master)

        async def scenario() -> None:
            await default.create(contract.make_record())
            assert await default._replicas_to_wait_for(job_key) == 1
            for i in range(1, 6):  # answered only once the replica has it: read it there
                await default.report("job-a", generation=1, rank=0, iteration=i,
                                     issue_until=i + 64)
                with redis.Redis(port=replica.port, decode_responses=True) as direct:
                    direct.execute_command("READONLY")
                    assert direct.hget(job_key, "issued_until") == str(i + 64)
            replica.pause()
            try:
                with pytest.raises(StoreUnavailable, match="replica"):
                    await strict.report("job-a", generation=1, rank=0, iteration=9,
                                        issue_until=99)
            finally:
                replica.resume()
            await default.close()
            await strict.close()

        store_loop.run(scenario())


def _slots_of(cluster: RedisCluster, port: int) -> list[tuple[int, int]]:
    """The slot ranges the master on ``port`` serves (CLUSTER SLOTS)."""
    with redis.Redis(port=cluster.ports[0]) as client:
        ranges = client.execute_command("CLUSTER SLOTS")
    return [(int(r[0]), int(r[1])) for r in ranges if int(r[2][1]) == port]


# -- a multi-rank job through `paramsched serve --redis-url redis+cluster://...` ---------


def test_a_four_rank_job_on_a_server_backed_by_the_cluster(
    redis_cluster: RedisCluster, redis_cluster_url: str, tmp_path: Path
) -> None:
    cfg = [*PLATEAU, dict(type="ExponentialMomentum", gamma=0.9, by_epoch=False)]
    groups = [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.8}]
    spec = spec_proto(cfg, groups, epoch_length=5, max_epochs=4)
    server = ServerProcess(data_dir=tmp_path, redis_url=redis_cluster_url,
                           args=["--plan-size", "4"]).start()  # fmt: skip
    try:
        assert any("redis+cluster://" in line for line in server.log)
        seen: dict[int, list[Any]] = {}
        lock = threading.Lock()
        errors: list[BaseException] = []

        def rank_loop(rank: int) -> None:
            channel = grpc.insecure_channel(server.target)
            stub = pb_grpc.SchedulerServiceStub(channel)
            try:
                attached = stub.AttachJob(pb.AttachJobRequest(
                    job_id="multi-rank", spec=spec, world_size=4, rank=rank))  # fmt: skip
                plans = [attached.plan]
                for it in range(1, 21):
                    request = pb.ReportProgressRequest(
                        job_id="multi-rank", generation=1, rank=rank, iteration=it
                    )
                    if it % 5 == 0:  # an epoch ends; every rank brings its own metric
                        request.epoch_end = it // 5 - 1
                        request.has_metrics = True
                        request.metrics["loss"] = [3.0, 2.0, 2.5, 1.0][it // 5 - 1] + rank
                    plans.append(stub.ReportProgress(request).plan)
                with lock:
                    for plan in plans:
                        for offset, values in enumerate(decode(plan)):
                            seen.setdefault(plan.start_iteration + offset, []).append(values)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                channel.close()

        threads = [threading.Thread(target=rank_loop, args=(r,)) for r in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(seen) == list(range(21))
        for iteration, versions in seen.items():
            assert all(v == versions[0] for v in versions), iteration

        channel = grpc.insecure_channel(server.target)
        stub = pb_grpc.SchedulerServiceStub(channel)
        state = payload_of(stub.GetState(
            pb.GetStateRequest(job_id="multi-rank", iteration=20)).state_json)  # fmt: skip
        decisions = {int(k): v for k, v in state["decisions"].items()}
        assert {0, 1, 2} <= set(decisions)  # the last epoch end changes no value
        expected = engine_values(cfg, groups, decisions=decisions, max_epochs=4)
        assert {i: versions[0] for i, versions in seen.items()} == dict(enumerate(expected))
        job = stub.GetJob(pb.GetJobRequest(job_id="multi-rank")).job
        assert [(p.rank, p.iteration) for p in job.progress] == [(r, 20) for r in range(4)]

        # The job's keys: one slot, one master.
        holders = {
            port: keys
            for port, keys in redis_cluster.keys_by_master("paramsched:{multi-rank}:*").items()
            if keys
        }
        assert len(holders) == 1 and len(next(iter(holders.values()))) == 3
        assert len({redis_cluster.keyslot(k) for k in next(iter(holders.values()))}) == 1

        # More jobs land on every master; the server lists them all.
        for i in range(12):
            stub.AttachJob(pb.AttachJobRequest(job_id=f"job-{i:02d}", spec=spec))
        by_master = redis_cluster.keys_by_master("paramsched:{*}:job")
        assert all(by_master.values()), by_master
        listed, token = [], ""
        while True:
            page = stub.ListJobs(pb.ListJobsRequest(page_size=5, page_token=token))
            listed += [j.job_id for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        assert listed == [f"job-{i:02d}" for i in range(12)] + ["multi-rank"]
        channel.close()
        assert server.terminate() == 0
    finally:
        server.stop()


def _master_of(cluster: RedisCluster, key: str, avoid: int | None = None) -> int:
    """The port of the live master serving ``key``'s slot (not ``avoid``)."""
    slot = key_slot(key.encode())  # (CLUSTER KEYSLOT would ask a node that may be dead)
    for port in cluster.ports:
        if port == avoid:
            continue
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0) as client:
                ranges = client.execute_command("CLUSTER SLOTS")
        except redis.RedisError:
            continue
        for start, end, master, *_replicas in ranges:
            if start <= slot <= end:
                return int(master[1])
    raise RuntimeError(f"no node answers CLUSTER SLOTS for slot {slot}")


def test_ranks_on_two_servers_agree_across_a_kill_9_of_their_shards_master(
        tmp_path: Path) -> None:
    """The job's shard master is SIGKILLed while two ranks train on two servers, with a
    change before and after; its replica takes over (cluster failover). Every rank
    applies the same values, equal to the final curve, and no change is lost."""
    with RedisCluster(masters=3, replicas=1, data_dir=tmp_path / "cluster") as cluster:
        key = "paramsched:{j}:job"
        old = _master_of(cluster, key)
        victim = next(node for node in cluster.nodes if node.port == old)
        run = train_across_a_failover(cluster.url, victim.kill)
        deadline = time.monotonic() + 60
        while _master_of(cluster, key, avoid=old) == old:
            assert time.monotonic() < deadline, "the shard did not fail over"
            time.sleep(0.2)
        print(f"cluster failover: the change after the kill waited {run.outage:.2f} s")
    check_ranks_agree(run)
