"""RedisJobStore behind Redis Sentinel: real master, replica and three sentinels.

One deployment per module (a single failover, at the end); the store contract runs on
it with ``WAIT`` for the replica after every write.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from redis_sentinel_harness import SentinelDeployment
from test_reschedule import create, values

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.server.store import JobStore, RedisJobStore, StoreUnavailable, open_store
from paramsched.server.store.redis_store import SentinelTarget, sentinel_target

import test_store_contract as contract
from grpc_harness import serving
from test_service_grpc import decode, spec_proto

Opener = Callable[[], JobStore]
COSINE_LONG = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=4),
               dict(type="CosineAnnealingLR", T_max=40, by_epoch=True,
                    convert_to_iter_based=True)]
HALF = ('[{"type": "ConstantParamScheduler", "param_name": "lr", "factor": 0.5, '
        '"by_epoch": false}]')


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelDeployment]:
    with SentinelDeployment() as deployment:
        yield deployment


@pytest.fixture
def sentinel_url(sentinel: SentinelDeployment) -> str:
    with redis.Redis(port=sentinel.master_port()) as master:
        master.flushall()
    return sentinel.url


@pytest.fixture
def open_job_store(sentinel_url: str, store_loop: asyncio.Runner) -> Iterator[Opener]:
    opened: list[RedisJobStore] = []

    def open_store() -> JobStore:
        opened.append(RedisJobStore(sentinel_url, wait_replicas=1, wait_timeout=5.0))
        return opened[-1]

    yield open_store
    for store in opened:
        store_loop.run(store.close())


class TestJobStoreContractOnSentinel(contract.TestJobStoreContract):
    """Every test of the JobStore contract, through the sentinels, waiting for the replica."""


# -- URLs -------------------------------------------------------------------------------


def test_sentinel_urls_name_the_sentinels_the_service_the_db_and_both_passwords() -> None:
    assert sentinel_target("redis://h:6379/0") is None
    assert sentinel_target("redis+cluster://h:7000") is None
    target = sentinel_target(
        "rediss+sentinel://app:m%40ster@s1:26379,s2:26380,[::1]:26381/jobs/3"
        "?sentinel_password=sent&sentinel_username=watch")
    assert target == SentinelTarget(
        sentinels=(("s1", 26379), ("s2", 26380), ("::1", 26381)), service="jobs", db=3,
        username="app", password="m@ster", sentinel_username="watch",
        sentinel_password="sent", ssl=True)
    assert "m@ster" not in repr(target) and "sent'" not in repr(target)
    plain = sentinel_target("redis+sentinel://s1:26379/mymaster")
    assert plain is not None and (plain.db, plain.ssl, plain.password) == (0, False, None)


@pytest.mark.parametrize("url", [
    "redis+sentinel://s1:26379",            # no service
    "redis+sentinel://s1/mymaster",         # no port
    "redis+sentinel://s1:26379/m/zero",     # db not a number
])
def test_a_bad_sentinel_url_is_refused_naming_the_part(url: str) -> None:
    with pytest.raises(ValueError, match="sentinel URL"):
        sentinel_target(url)


def test_open_store_passes_the_wait_settings(sentinel_url: str, tmp_path: Path,
                                             store_loop: asyncio.Runner) -> None:
    store = open_store(sentinel_url, tmp_path, redis_wait_replicas=1, redis_wait_timeout=2.5)
    assert isinstance(store, RedisJobStore) and store.sentinel is not None
    assert (store.wait_replicas, store.wait_timeout) == (1, 2.5)
    store_loop.run(store.close())


# -- WAIT -------------------------------------------------------------------------------


def test_the_default_waits_for_one_replica_when_the_master_has_one(
    sentinel_url: str, store_loop: asyncio.Runner
) -> None:
    store = RedisJobStore(sentinel_url)

    async def scenario() -> int:
        await store.create(contract.make_record("job-a"))
        return await store._replicas_to_wait_for(store.job_keys("job-a")[0])

    assert store_loop.run(scenario()) == 1
    store_loop.run(store.close())


def test_a_write_the_replicas_cannot_confirm_is_unavailable_not_acknowledged(
    sentinel_url: str, store_loop: asyncio.Runner
) -> None:
    store = RedisJobStore(sentinel_url, wait_replicas=2, wait_timeout=0.2)  # only 1 exists

    async def scenario() -> None:
        with pytest.raises(StoreUnavailable, match="not confirmed by 2 replica"):
            await store.create(contract.make_record("job-a"))
        with pytest.raises(StoreUnavailable):
            await store.report("job-a", generation=1, rank=0, iteration=3, issue_until=10)
        with pytest.raises(StoreUnavailable):
            await store.reschedule("job-a", generation=1, expected_changes=0,
                                   change={"from_iteration": 20}, audit_entry={})

    store_loop.run(scenario())
    store_loop.run(store.close())


def test_the_server_answers_unavailable_when_the_replicas_cannot_confirm(
    sentinel_url: str,
) -> None:
    config = {"redis_url": sentinel_url, "redis_wait_replicas": 2, "redis_wait_timeout": 0.2}
    with serving(plan_size=8, **config) as (_, stub), pytest.raises(grpc.RpcError) as info:
        create(stub)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_script_flushed_from_the_master_is_loaded_again_under_wait(
    sentinel: SentinelDeployment, sentinel_url: str, store_loop: asyncio.Runner
) -> None:
    store = RedisJobStore(sentinel_url, wait_replicas=1)

    async def scenario() -> int:
        await store.create(contract.make_record("job-a"))
        with redis.Redis(port=sentinel.master_port()) as master:
            master.script_flush()
        record = await store.report("job-a", generation=1, rank=0, iteration=2, issue_until=9)
        return record.issued_until

    assert store_loop.run(scenario()) == 9
    store_loop.run(store.close())


# -- idempotent changes -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["embedded", "sentinel"])
def test_a_retried_change_with_the_same_request_id_is_applied_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    where = ({"redis_url": request.getfixturevalue("sentinel_url")} if backend == "sentinel"
             else {"data_dir": tmp_path})
    with serving(plan_size=8, **where) as (_, stub):
        create(stub)
        before = values(stub)
        scale = pb.RescheduleJobRequest(
            job_id="j", from_iteration=20, mode=pb.RescheduleJobRequest.MULTIPLY,
            action="scale", request_id="retry-me",
            param_scheduler_json='[{"type": "ConstantParamScheduler", "param_name": "lr", '
                                 '"factor": 0.5, "by_epoch": false}]')
        first = stub.RescheduleJob(scale)
        again = stub.RescheduleJob(scale)  # the client's retry after a lost reply
        assert first.applied and again.applied
        assert again.from_iteration == first.from_iteration == 20
        assert again.entry.time == first.entry.time
        job = stub.GetJob(pb.GetJobRequest(job_id="j")).job
        assert job.num_changes == 1
        after = values(stub)
        assert after[20][0]["lr"] == before[20][0]["lr"] * 0.5  # halved once, not quartered
        history = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries
        assert [e.action for e in history].count("scale") == 1
        other = stub.RescheduleJob(pb.RescheduleJobRequest(
            job_id="j", from_iteration=30, start_values={"lr": 0.01}, action="set",
            request_id="another"))
        assert other.applied
        assert stub.GetJob(pb.GetJobRequest(job_id="j")).job.num_changes == 2


# -- failover (last: it moves the master) ----------------------------------------------


def test_zz_ranks_on_two_servers_agree_across_a_kill_9_failover_with_changes_on_both_sides(
    sentinel: SentinelDeployment, sentinel_url: str
) -> None:
    """Two ranks train on two servers; an admin scales lr before the master is SIGKILLed
    and sets it after; every rank applies the same values, equal to the final curve."""
    total, plan = 200, 8
    applied: list[dict[int, list[dict[str, float]]]] = [{}, {}]
    progress = [0, 0]
    failures: list[BaseException] = []

    def retried(call: Callable[[], object], started: float, limit: float = 60.0) -> object:
        while True:  # what the client does with UNAVAILABLE: back off and retry
            try:
                return call()
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if time.monotonic() - started > limit:
                    raise
                time.sleep(0.1)

    with serving(plan_size=plan, redis_url=sentinel_url) as (_, stub_a), \
            serving(plan_size=plan, redis_url=sentinel_url) as (_, stub_b):
        stub_a.AttachJob(pb.AttachJobRequest(
            job_id="j", world_size=2, rank=0,
            spec=spec_proto(COSINE_LONG, epoch_length=5, max_epochs=total // 5)))

        def rank(r: int, stub: object) -> None:
            try:
                it = 0
                while it < total:
                    request = pb.ReportProgressRequest(job_id="j", generation=1, rank=r,
                                                       iteration=it, plan_size=plan)
                    reply = retried(lambda: stub.ReportProgress(request),  # type: ignore[attr-defined]  # noqa: B023
                                    time.monotonic())
                    held = decode(reply.plan)  # type: ignore[attr-defined]
                    assert held, f"rank {r}: empty plan at {it}"
                    for k, values in enumerate(held):
                        applied[r][reply.plan.start_iteration + k] = values  # type: ignore[attr-defined]
                    it = reply.plan.start_iteration + len(held)  # type: ignore[attr-defined]
                    progress[r] = it
                    time.sleep(0.02)
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=rank, args=(0, stub_a)),
                   threading.Thread(target=rank, args=(1, stub_b))]
        for t in threads:
            t.start()

        def change(stub: object, request_id: str, **fields: object) -> pb.RescheduleJobResponse:
            request = pb.RescheduleJobRequest(job_id="j", request_id=request_id, **fields)
            return retried(lambda: stub.RescheduleJob(request),  # type: ignore[attr-defined]
                           time.monotonic())  # type: ignore[return-value]

        while min(progress) < 40 and not failures:
            time.sleep(0.02)
        first = change(stub_a, "before", mode=pb.RescheduleJobRequest.MULTIPLY, action="scale",
                       param_scheduler_json=HALF)
        while min(progress) < 80 and not failures:
            time.sleep(0.02)
        old = sentinel.master_port()
        sentinel.kill_master()
        killed = time.monotonic()
        second = change(stub_b, "after", start_values={"lr": 0.001}, action="set")
        outage = time.monotonic() - killed
        for t in threads:
            t.join(120)
        assert not failures, failures
        assert sentinel.wait_for_failover(old) != old
        print(f"failover: the change after the kill waited {outage:.2f} s")
        final = decode(stub_a.GetValues(pb.GetValuesRequest(job_id="j")).plan)
        job = stub_b.GetJob(pb.GetJobRequest(job_id="j")).job
        history = stub_b.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries

    assert first.applied and second.applied and second.from_iteration > first.from_iteration
    assert sorted(applied[0]) == sorted(applied[1]) == list(range(total))
    for i in range(total):
        assert applied[0][i] == applied[1][i] == final[i], i
    assert job.num_changes == 2
    assert [e.action for e in history if e.action in ("scale", "set")] == ["scale", "set"]
    assert final[second.from_iteration][0]["lr"] == 0.001


# -- deploy/ ------------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_kubernetes_sentinel_overlay_renders_valid_objects_with_a_sentinel_url() -> None:
    import shutil
    import subprocess

    import kubernetes_validate
    import yaml

    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    result = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s-sentinel")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    objects = {(d["kind"], d["metadata"]["name"]): d
               for d in yaml.safe_load_all(result.stdout) if d}  # fmt: skip
    for doc in objects.values():
        kubernetes_validate.validate(doc, "1.32.0", strict=True)
    config = objects["ConfigMap", "paramsched-config"]["data"]
    target = sentinel_target(config["PARAMSCHED_REDIS_URL"])
    assert target is not None and target.service == "paramsched" and len(target.sentinels) == 3
    assert config["PARAMSCHED_REDIS_WAIT_REPLICAS"] == "1"
    redis_set = objects["StatefulSet", "paramsched-redis"]
    assert redis_set["spec"]["replicas"] == 3
    containers = {c["name"]: c for c in redis_set["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"redis", "sentinel"}
    ports = {p["name"] for p in objects["Service", "paramsched-redis"]["spec"]["ports"]}
    assert ports == {"redis", "sentinel"}
    scripts = objects["ConfigMap", "paramsched-redis-scripts"]["data"]
    assert "sentinel monitor paramsched" in scripts["sentinel.sh"]


def test_the_compose_sentinel_variant_points_the_servers_at_three_sentinels() -> None:
    import yaml

    compose = yaml.safe_load((DEPLOY / "compose.sentinel.yaml").read_text())
    services = compose["services"]
    assert {"redis-a", "redis-b", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(services)
    url = services["paramsched-1"]["environment"]["PARAMSCHED_REDIS_URL"]
    target = sentinel_target(url)
    assert target is not None and [h for h, _ in target.sentinels] == [
        "sentinel-1", "sentinel-2", "sentinel-3"]
    assert "--replicaof" in services["redis-b"]["command"]
