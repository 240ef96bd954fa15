"""Signed plan horizons: ranks report the end of the plan they hold, and no change starts
before the highest one, even when the store lost the record of the plan (a failover that
promoted a replica which missed the last ``issued_until``)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import torch
from redis_sentinel_harness import SentinelDeployment

from paramsched import Client
from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.server.store.embedded import DB_FILENAME, private_store_dir

from grpc_harness import InProcessServer
from test_service_grpc import WARMUP_COSINE, spec_proto

ADMIN = "admin-secret-0123456789"
TEAM = "team-secret-0123456789"
TOKENS = {"tokens": [
    {"name": "platform", "token": ADMIN, "role": "admin"},
    {"name": "team", "token": TEAM, "job_prefixes": ["team-"]},
]}
JOB = "team-horizon"
COSINE = [dict(type="CosineAnnealingLR", T_max=100, by_epoch=False)]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


class Served:
    """A server with auth on and state keys, on one store, and a way to make that store
    forget plans: write the job back with a lower ``issued_until`` and no ``held_until``,
    as a promoted replica that missed the last writes would hold it."""

    def __init__(self, server: InProcessServer, stub: pb_grpc.SchedulerServiceStub,
                 forget: Callable[[int], None]) -> None:
        self.server, self.stub, self.forget = server, stub, forget

    def attach(self, plan_size: int) -> pb.AttachJobResponse:
        return self.stub.AttachJob(
            pb.AttachJobRequest(job_id=JOB, spec=spec_proto(WARMUP_COSINE, max_epochs=40),
                                world_size=2,
                                rank=0, plan_size=plan_size, run_id="run-1"),
            metadata=bearer(TEAM))

    def report(self, iteration: int, held_until: int, token: str,
               plan_size: int = 1) -> pb.ReportProgressResponse:
        return self.stub.ReportProgress(
            pb.ReportProgressRequest(job_id=JOB, generation=1, rank=1, iteration=iteration,
                                     plan_size=plan_size, held_until=held_until,
                                     horizon_token=token),
            metadata=bearer(TEAM))

    def change(self, from_iteration: int | None = None,
               dry_run: bool = False) -> pb.RescheduleJobResponse:
        request = pb.RescheduleJobRequest(job_id=JOB, start_values={"lr": 0.05},
                                          action="set", dry_run=dry_run)
        if from_iteration is not None:
            request.from_iteration = from_iteration
        return self.stub.RescheduleJob(request, metadata=bearer(ADMIN))


@pytest.fixture(params=["embedded", "redis"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    config: dict[str, Any] = {"tokens_inline": json.dumps(TOKENS)}
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        config["redis_url"] = url

        def forget(issued_until: int) -> None:
            client = redis.Redis.from_url(url)
            try:
                key = f"paramsched:{{{JOB}}}:job"
                client.hset(key, "issued_until", str(issued_until))
                client.hdel(key, "held_until")
            finally:
                client.close()
    else:
        config["data_dir"] = tmp_path

        def forget(issued_until: int) -> None:
            path = private_store_dir(tmp_path) / DB_FILENAME
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE jobs SET issued_until = ?, held_until = 0 "
                             "WHERE job_id = ?", (issued_until, JOB))
            conn.close()

    server = InProcessServer(**config).start()
    channel = grpc.insecure_channel(server.target)
    try:
        yield Served(server, pb_grpc.SchedulerServiceStub(channel), forget)
    finally:
        channel.close()
        server.stop()


def test_plans_carry_a_signed_horizon(served: Served):
    plan = served.attach(plan_size=40).plan
    assert plan.num_iterations == 40
    key_id, _, signature = plan.horizon_token.partition(":")
    assert key_id == "test-1" and len(signature) == 64


def test_a_store_that_lost_issued_until_still_refuses_a_change_inside_a_held_plan(
        served: Served):
    plan = served.attach(plan_size=40).plan
    end = plan.start_iteration + plan.num_iterations
    served.forget(5)
    # The loss is real: without the rank's horizon, a change at 20 would now be accepted.
    assert served.change(20, dry_run=True).from_iteration == 20
    # A rank that holds the plan reports (a one-iteration refill: issued_until only 4).
    served.report(3, end, plan.horizon_token)
    code, details = refused(lambda: served.change(20))
    assert code == grpc.StatusCode.OUT_OF_RANGE and "from_iteration" in details
    assert f"earliest iteration a change can take effect is {end}" in details
    # The default start is past the held plan, and the change lands there.
    applied = served.change()
    assert applied.applied and applied.from_iteration == end


def test_a_forged_horizon_is_invalid_argument_and_changes_nothing(served: Served):
    plan = served.attach(plan_size=10).plan
    end = plan.start_iteration + plan.num_iterations
    forgeries = [
        (5000, plan.horizon_token),  # a real token, for another end
        (5000, "test-1:" + "0" * 64),  # a known key id, a made-up signature
        (5000, "no-colon-here"),
    ]
    for held_until, token in forgeries:
        code, details = refused(lambda h=held_until, t=token: served.report(2, h, t))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "horizon_token" in details
    # Nothing was stored: a change right after the plan handed out is still accepted.
    assert served.change(end, dry_run=True).from_iteration == end


def test_an_unsigned_horizon_is_ignored_with_auth_on(served: Served):
    plan = served.attach(plan_size=10).plan
    end = plan.start_iteration + plan.num_iterations
    # No token (or one of a key this server does not know): the report is served, the
    # claim does not count, so a job-scoped token cannot block every change.
    served.report(2, 5000, "")
    served.report(2, 5000, "retired-key:" + "0" * 64)
    assert served.change(end, dry_run=True).from_iteration == end


def test_a_new_generation_forgets_the_horizons_of_the_old_one(served: Served):
    plan = served.attach(plan_size=40).plan
    served.report(3, 40, plan.horizon_token)
    state = served.stub.GetState(pb.GetStateRequest(job_id=JOB, iteration=3),
                                 metadata=bearer(TEAM)).state_json
    served.stub.LoadState(pb.LoadStateRequest(job_id=JOB, state_json=state, rank=0,
                                              plan_size=4, run_id="run-2"),
                          metadata=bearer(TEAM))
    # The old generation's token is refused (signed for generation 1, not 2).
    code, details = refused(lambda: served.stub.ReportProgress(
        pb.ReportProgressRequest(job_id=JOB, generation=2, rank=1, iteration=3, plan_size=1,
                                 held_until=40, horizon_token=plan.horizon_token),
        metadata=bearer(TEAM)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "horizon_token" in details
    issued = served.stub.GetJob(pb.GetJobRequest(job_id=JOB),
                                metadata=bearer(TEAM)).job.issued_until
    assert issued < 40
    assert served.change(dry_run=True).from_iteration == issued


def test_without_state_keys_or_auth_unsigned_horizons_count_up_to_a_cap(tmp_path: Path):
    server = InProcessServer(data_dir=tmp_path).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            spec = spec_proto([dict(type="CosineAnnealingLR", T_max=20_000, by_epoch=False)],
                              max_epochs=None, max_iters=20_000)
            plan = stub.AttachJob(pb.AttachJobRequest(job_id="open", spec=spec,
                                                      plan_size=8)).plan
            assert plan.horizon_token == ""  # nothing to sign with
            stub.ReportProgress(pb.ReportProgressRequest(
                job_id="open", generation=1, rank=0, iteration=2, plan_size=1,
                held_until=100))
            change = pb.RescheduleJobRequest(job_id="open", start_values={"lr": 0.05},
                                             dry_run=True)
            assert stub.RescheduleJob(change).from_iteration == 100
            # A claim past every plan by more than max_plan_size (4096) counts only so far.
            stub.ReportProgress(pb.ReportProgressRequest(
                job_id="open", generation=1, rank=0, iteration=2, plan_size=1,
                held_until=19_000))
            assert stub.RescheduleJob(change).from_iteration == 8 + 4096
    finally:
        server.stop()


def test_a_training_rank_reports_the_end_of_the_plan_it_holds(tmp_path: Path, redis_url: str):
    server = InProcessServer(redis_url=redis_url, plan_size=16,
                             tokens_inline=json.dumps(TOKENS)).start()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    try:
        with Client(server.target, token=TEAM, plan_size=16, max_plan_size=16,
                    prefetch_seconds=0.0) as client:
            handle = client.attach(optimizer, JOB, COSINE, max_iters=100)
            for _ in range(12):
                optimizer.step()
            handle.detach()
        job = redis.Redis.from_url(redis_url, decode_responses=True).hgetall(
            f"paramsched:{{{JOB}}}:job")
        # The rank's reports carried its plans' signed ends, which the store kept.
        assert 12 < int(job["held_until"]) <= int(job["issued_until"])
    finally:
        server.stop()


def test_a_real_failover_that_lost_a_plan_still_keeps_changes_out_of_it():
    """Redis Sentinel, no WAIT: the replica misses the write of a 40-iteration plan (it is
    paused), the master is killed -9 and the replica promoted without it. The next report
    of the rank that holds the plan brings its signed end back; the change stays out."""
    with SentinelDeployment() as deployment:
        server = InProcessServer(redis_url=deployment.url, redis_wait_replicas=0,
                                 tokens_inline=json.dumps(TOKENS)).start()
        channel = grpc.insecure_channel(server.target)
        served = Served(server, pb_grpc.SchedulerServiceStub(channel), lambda _: None)
        job_key = f"paramsched:{{{JOB}}}:job"
        try:
            served.attach(plan_size=4)
            replica = deployment.replica
            with redis.Redis(port=replica.port, decode_responses=True) as direct:
                deadline = time.monotonic() + 10
                while direct.hget(job_key, "issued_until") != "4":
                    assert time.monotonic() < deadline, "the replica never got the job"
                    time.sleep(0.05)
            # Cut replication (a paused replica would still find the stream in its socket
            # buffer on resume): the master drops it, and paused it cannot reconnect.
            replica.pause()
            with redis.Redis(port=deployment.master_port()) as master:
                master.execute_command("CLIENT", "KILL", "TYPE", "replica")
            plan = served.report(2, 0, "", plan_size=40).plan  # on the master only
            end = plan.start_iteration + plan.num_iterations
            assert end == 42
            old = deployment.master_port()
            deployment.kill_master()
            replica.resume()
            new = deployment.wait_for_failover(old)
            with redis.Redis(port=new, decode_responses=True) as direct:
                assert direct.hget(job_key, "issued_until") == "4"  # the plan is lost
            deadline = time.monotonic() + 30
            while True:  # the server follows the failover; UNAVAILABLE until it has
                try:
                    served.report(3, end, plan.horizon_token)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            code, details = refused(lambda: served.change(20))
            assert code == grpc.StatusCode.OUT_OF_RANGE and "from_iteration" in details
            assert served.change().from_iteration == end
        finally:
            channel.close()
            server.stop()
