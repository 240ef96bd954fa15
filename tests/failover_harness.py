"""A job trained through a store failover: two ranks on two servers, a live change
before the kill and one after, every applied value recorded (Sentinel and Cluster
tests share it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from paramsched.api.v1 import scheduler_pb2 as pb

from grpc_harness import serving
from test_service_grpc import decode, spec_proto

COSINE_LONG = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=4),
               dict(type="CosineAnnealingLR", T_max=40, by_epoch=True,
                    convert_to_iter_based=True)]
HALF = ('[{"type": "ConstantParamScheduler", "param_name": "lr", "factor": 0.5, '
        '"by_epoch": false}]')


@dataclass
class FailoverRun:
    applied: list[dict[int, Any]]  # per rank: iteration -> the values it applied
    final: list[Any]  # the job's whole curve afterwards
    first: Any  # the change before the kill (RescheduleJobResponse)
    second: Any  # ... and after it
    outage: float  # how long the change after the kill waited
    num_changes: int
    actions: list[str]  # the audit trail's change actions


def retried(call: Callable[[], Any], started: float, limit: float = 60.0) -> Any:
    """What the client does with UNAVAILABLE: back off and retry."""
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() - started > limit:
                raise
            time.sleep(0.1)


def train_across_a_failover(redis_url: str, kill: Callable[[], object], *, total: int = 200,
                            plan: int = 8) -> FailoverRun:
    """Two ranks train job "j" on two servers over ``redis_url``; an admin scales lr at
    iteration ~40, ``kill()`` runs at ~80, then an admin sets lr (retrying through the
    outage with one request id). Raises what a rank raised."""
    applied: list[dict[int, Any]] = [{}, {}]
    progress = [0, 0]
    failures: list[BaseException] = []
    with serving(plan_size=plan, redis_url=redis_url) as (_, stub_a), \
            serving(plan_size=plan, redis_url=redis_url) as (_, stub_b):
        stub_a.AttachJob(pb.AttachJobRequest(
            job_id="j", world_size=2, rank=0,
            spec=spec_proto(COSINE_LONG, epoch_length=5, max_epochs=total // 5)))

        def rank(r: int, stub: Any) -> None:
            try:
                it = 0
                while it < total:
                    request = pb.ReportProgressRequest(job_id="j", generation=1, rank=r,
                                                       iteration=it, plan_size=plan)
                    reply = retried(lambda: stub.ReportProgress(request),  # noqa: B023
                                    time.monotonic())
                    held = decode(reply.plan)
                    assert held, f"rank {r}: empty plan at {it}"
                    for k, values in enumerate(held):
                        applied[r][reply.plan.start_iteration + k] = values
                    it = reply.plan.start_iteration + len(held)
                    progress[r] = it
                    time.sleep(0.02)
            except BaseException as exc:  # reported by the caller
                failures.append(exc)

        threads = [threading.Thread(target=rank, args=(0, stub_a)),
                   threading.Thread(target=rank, args=(1, stub_b))]
        for t in threads:
            t.start()

        def change(stub: Any, request_id: str, **fields: Any) -> Any:
            request = pb.RescheduleJobRequest(job_id="j", request_id=request_id, **fields)
            return retried(lambda: stub.RescheduleJob(request), time.monotonic())

        while min(progress) < 40 and not failures:
            time.sleep(0.02)
        first = change(stub_a, "before", mode=pb.RescheduleJobRequest.MULTIPLY, action="scale",
                       param_scheduler_json=HALF)
        while min(progress) < 80 and not failures:
            time.sleep(0.02)
        kill()
        killed = time.monotonic()
        second = change(stub_b, "after", start_values={"lr": 0.001}, action="set")
        outage = time.monotonic() - killed
        for t in threads:
            t.join(120)
        if failures:
            raise failures[0]
        final = decode(stub_a.GetValues(pb.GetValuesRequest(job_id="j")).plan)
        job = stub_b.GetJob(pb.GetJobRequest(job_id="j")).job
        history = stub_b.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries
    return FailoverRun(applied, final, first, second, outage, job.num_changes,
                       [e.action for e in history if e.action in ("scale", "set")])


def check_ranks_agree(run: FailoverRun, total: int = 200) -> None:
    """No rank failed, both applied every iteration, identical values equal to the
    final curve, and no acknowledged change was lost."""
    assert run.first.applied and run.second.applied
    assert run.second.from_iteration > run.first.from_iteration
    assert sorted(run.applied[0]) == sorted(run.applied[1]) == list(range(total))
    for i in range(total):
        assert run.applied[0][i] == run.applied[1][i] == run.final[i], i
    assert run.num_changes == 2
    assert run.actions == ["scale", "set"]
    assert run.final[run.second.from_iteration][0]["lr"] == 0.001
