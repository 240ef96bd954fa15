"""Bounded cost per request: plans bounded in values, a job cache bounded in bytes, long
computations queued on a few workers, and readiness that says when the server cannot
keep up (liveness stays up). Through a real in-process gRPC server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.server.app import SERVICE_NAME

from grpc_harness import serving
from test_service_grpc import payload_of, spec_proto

LONG = [dict(type="CosineAnnealingLR", by_epoch=False, T_max=3_000_000)]


def _health(channel: grpc.Channel, name: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status


def _unsigned_state_far(stub: Any, job_id: str, iteration: int) -> str:
    """A checkpoint of ``job_id`` moved to ``iteration`` without its keyframe (as an
    older server wrote them): loading it replays from 0 in a worker."""
    state = payload_of(stub.GetState(pb.GetStateRequest(job_id=job_id,
                                                        iteration=0)).state_json)
    state.update(iteration=iteration)
    state.pop("keyframe", None)
    return json.dumps({"format": "paramsched.schedule/v2", "payload": json.dumps(state),
                       "key_id": "", "signature": ""})


def test_readiness_goes_not_serving_while_long_computations_queue_and_liveness_stays(
        tmp_path: Path) -> None:
    with serving(data_dir=tmp_path, compute_workers=1, max_compute_waiting=0) as (server,
                                                                                   stub):
        channel = grpc.insecure_channel(server.target)
        for name in ("a", "b", "c"):
            stub.AttachJob(pb.AttachJobRequest(job_id=name, spec=spec_proto(
                LONG, [{"lr": 0.1}] * 2, max_epochs=None, max_iters=3_000_000)))
        assert _health(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        loads = [stub.LoadState.future(pb.LoadStateRequest(
            job_id=name, state_json=_unsigned_state_far(stub, name, 2_000_000), run_id="r2"))
            for name in ("a", "b", "c")]
        seen = set()
        deadline = time.monotonic() + 60
        while not all(f.done() for f in loads) and time.monotonic() < deadline:
            seen.add(_health(channel, SERVICE_NAME))
            assert _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
            time.sleep(0.05)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen
        for f in loads:
            assert f.result(timeout=120).plan.start_iteration == 2_000_000
        deadline = time.monotonic() + 10
        while _health(channel, SERVICE_NAME) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "readiness did not come back"
            time.sleep(0.05)
        channel.close()


def test_a_plan_holds_at_most_max_plan_cells_values(tmp_path: Path) -> None:
    """64 groups x 1 param with plan_size 4096: the plan is cut to the cell budget (the
    rank asks again), and the store records only what was handed out."""
    with serving(data_dir=tmp_path) as (server, stub):
        service = server.parts.service  # type: ignore[union-attr]
        service.max_plan_cells = 64 * 100
        reply = stub.AttachJob(pb.AttachJobRequest(job_id="wide", plan_size=4096, spec=spec_proto(
            LONG, [{"lr": 0.1}] * 64, max_epochs=None, max_iters=3_000_000)))
        assert reply.plan.num_iterations == 100
        plan = stub.ReportProgress(pb.ReportProgressRequest(
            job_id="wide", generation=reply.job.generation, iteration=50, plan_size=4096)).plan
        assert plan.start_iteration == 50 and plan.num_iterations == 100
        job = stub.GetJob(pb.GetJobRequest(job_id="wide")).job
        assert job.issued_until == 150


def test_the_job_cache_stays_within_its_memory_budget(tmp_path: Path) -> None:
    with serving(data_dir=tmp_path) as (server, stub):
        service = server.parts.service  # type: ignore[union-attr]
        service.cache_bytes = 200_000
        for i in range(40):
            reply = stub.AttachJob(pb.AttachJobRequest(job_id=f"j{i}", spec=spec_proto(
                LONG, [{"lr": 0.1}] * 4, max_epochs=None, max_iters=3_000_000)))
            stub.ReportProgress(pb.ReportProgressRequest(
                job_id=f"j{i}", generation=reply.job.generation, iteration=128))
            assert service.cache_nbytes() <= 200_000 or len(service._jobs) == 1
        assert 1 <= len(service._jobs) < 40


# -- retention and quotas ---------------------------------------------------------------

def _finish(stub: Any, job_id: str, max_iters: int) -> None:
    reply = stub.AttachJob(pb.AttachJobRequest(job_id=job_id, spec=spec_proto(
        [dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=4)], [{"lr": 0.1}],
        max_epochs=None, max_iters=max_iters), plan_size=max_iters + 1))
    stub.ReportProgress(pb.ReportProgressRequest(job_id=job_id, generation=reply.job.generation,
                                                 iteration=max_iters))


def test_finished_jobs_are_deleted_after_the_retention_and_their_trail_stays(
        tmp_path: Path) -> None:
    with serving(data_dir=tmp_path, retention_seconds=0) as (server, stub):
        service = server.parts.service  # type: ignore[union-attr]
        _finish(stub, "done", 8)
        reply = stub.AttachJob(pb.AttachJobRequest(job_id="running", spec=spec_proto(
            LONG, [{"lr": 0.1}], max_epochs=None, max_iters=3_000_000)))
        stub.ReportProgress(pb.ReportProgressRequest(job_id="running", generation=1,
                                                     iteration=100))
        done = stub.GetJob(pb.GetJobRequest(job_id="done")).job
        assert reply.job.job_id == "running" and done.job_id == "done"
        now = time.time()
        assert server._call(service.expire_finished(3600, now=now)) == []  # not yet
        assert server._call(service.expire_finished(3600, now=now + 7200)) == ["done"]
        with pytest.raises(grpc.RpcError) as info:
            stub.GetJob(pb.GetJobRequest(job_id="done"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        trail = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="done")).entries
        assert [e.action for e in trail][-1] == "expire"
        assert stub.GetJob(pb.GetJobRequest(job_id="running")).job.job_id == "running"


def test_a_job_scoped_token_has_a_quota_of_live_jobs(tmp_path: Path) -> None:
    tokens = json.dumps({"tokens": [
        {"name": "admin", "token": "a" * 32, "role": "admin"},
        {"name": "team", "token": "t" * 32, "job_prefixes": ["team-"], "max_jobs": 2}]})
    with serving(data_dir=tmp_path, tokens_inline=tokens) as (_server, stub):
        team = (("authorization", "Bearer " + "t" * 32),)
        admin = (("authorization", "Bearer " + "a" * 32),)
        spec = spec_proto(LONG, [{"lr": 0.1}], max_epochs=None, max_iters=3_000_000)
        for name in ("team-1", "team-2"):
            stub.AttachJob(pb.AttachJobRequest(job_id=name, spec=spec), metadata=team)
        stub.AttachJob(pb.AttachJobRequest(job_id="team-1", spec=spec), metadata=team)  # joins
        with pytest.raises(grpc.RpcError) as info:
            stub.AttachJob(pb.AttachJobRequest(job_id="team-3", spec=spec), metadata=team)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_jobs=2" in info.value.details()
        stub.DeleteJob(pb.DeleteJobRequest(job_id="team-1"), metadata=admin)
        stub.AttachJob(pb.AttachJobRequest(job_id="team-3", spec=spec), metadata=team)


@pytest.mark.parametrize(("entry", "message"), [
    ({"role": "job", "jobs": ["a"], "max_jobs": 0}, "max_jobs: must be an integer >= 1"),
    ({"role": "job", "jobs": ["a"], "max_jobs": "5"}, "max_jobs: must be an integer >= 1"),
    ({"role": "job", "jobs": ["a"], "max_jobs": True}, "max_jobs: must be an integer >= 1"),
    ({"role": "admin", "max_jobs": 5}, "admin tokens have no quota"),
])
def test_a_bad_quota_in_the_tokens_file_names_the_field(entry: dict[str, Any],
                                                        message: str) -> None:
    from paramsched.server.auth import AuthConfigError, TokenRegistry

    document = {"tokens": [{"name": "x", "token": "x" * 32, **entry}]}
    with pytest.raises(AuthConfigError, match=message):
        TokenRegistry.from_document(document, "tokens.json")


def test_job_scoped_tokens_get_the_default_quota() -> None:
    from paramsched.server.auth import DEFAULT_MAX_JOBS, TokenRegistry

    registry = TokenRegistry.from_document({"tokens": [
        {"name": "x", "token": "x" * 32, "jobs": ["a"]},
        {"name": "y", "token": "y" * 32, "role": "admin"}]}, "tokens.json")
    assert registry.authenticate("x" * 32).max_jobs == DEFAULT_MAX_JOBS  # type: ignore[union-attr]
    assert registry.authenticate("y" * 32).max_jobs is None  # type: ignore[union-attr]


def test_service_errors_cross_processes_with_their_fields() -> None:
    """Previews run in worker processes: their errors come back as raised."""
    import pickle

    from paramsched.server.errors import InvalidArgument, ResourceExhausted

    error = pickle.loads(pickle.dumps(InvalidArgument("must be >= 1", field="spec.max_iters")))
    assert isinstance(error, InvalidArgument)
    assert (str(error), error.field, error.reason) == (
        "invalid spec.max_iters: must be >= 1", "spec.max_iters", "must be >= 1")
    budget = pickle.loads(pickle.dumps(ResourceExhausted("too big", budget="max_values_cells")))
    assert budget.budget == "max_values_cells" and str(budget) == "too big"


def test_a_preview_in_a_worker_process_equals_the_engine_and_names_bad_fields(
        tmp_path: Path) -> None:
    from paramsched.server.schedules import Timeline, build_job_spec

    cfg = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=50),
           dict(type="CosineAnnealingLR", by_epoch=False, begin=50)]
    with serving(data_dir=tmp_path) as (server, stub):
        assert server.parts.service.preview_processes  # type: ignore[union-attr]
        plan = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=spec_proto(
            cfg, [{"lr": 0.1}], max_epochs=None, max_iters=1000),
            start_iteration=900, stop_iteration=1000)).plan
        engine = Timeline(build_job_spec(cfg, [{"lr": 0.1}], max_iters=1000)).values_range(
            900, 1000)
        assert list(plan.values) == [row[0]["lr"] for row in engine]
        with pytest.raises(grpc.RpcError) as info:
            stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=spec_proto(
                [dict(type="StepLR", step_size=0, by_epoch=False)], [{"lr": 0.1}],
                max_epochs=None, max_iters=1000)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "step_size" in info.value.details()


def test_a_killed_preview_worker_is_replaced_and_the_preview_still_answers(
        tmp_path: Path) -> None:
    import os
    import signal

    from paramsched.server.service import previews

    spec = spec_proto([dict(type="CosineAnnealingLR", by_epoch=False)], [{"lr": 0.1}],
                      max_epochs=None, max_iters=1000)
    with serving(data_dir=tmp_path) as (_server, stub):
        first = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=spec)).plan
        for executor in previews._pools.values():
            for pid in list(executor._processes):  # type: ignore[attr-defined]
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        again = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=spec)).plan
        assert list(again.values) == list(first.values)
