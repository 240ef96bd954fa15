"""RedisJobStore behind Redis Sentinel: real master, replica and three sentinels.

One deployment per module (a single failover, at the end); the store contract runs on
it with ``WAIT`` for the replica after every write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from failover_harness import check_ranks_agree, train_across_a_failover
from redis_sentinel_harness import SentinelDeployment
from test_reschedule import create, values

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.server.store import JobStore, RedisJobStore, StoreUnavailable, open_store
from paramsched.server.store.redis_store import SentinelTarget, sentinel_target

import test_store_contract as contract
from grpc_harness import serving

Opener = Callable[[], JobStore]


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
    old = sentinel.master_port()
    run = train_across_a_failover(sentinel_url, sentinel.kill_master)
    assert sentinel.wait_for_failover(old) != old
    print(f"failover: the change after the kill waited {run.outage:.2f} s")
    check_ranks_agree(run)


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
