"""Job integrity: incarnations, runs, signed checkpoints, ranks, one meaning per code.

Each test is one attack or mistake from the field (issue "Job integrity"), through a
real in-process server, real Redis where two servers share jobs, and the real client.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paramsched import Client
from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.client import (
    JobReplacedError,
    ResumeRequiredError,
    StaleGenerationError,
)
from paramsched.client.errors import InvalidArgumentError
from paramsched.server.app import ServerConfig, build_parts
from paramsched.server.service.signing import StateKeyError
from paramsched.server.store.embedded import DB_FILENAME, EmbeddedJobStore, StoreConfigError

from grpc_harness import InProcessServer, serving, write_state_keys
from test_service_grpc import PLATEAU, WARMUP_COSINE, decode, spec_proto

ADMIN = "admin-secret-0123456789"
TEAM = "team-a-secret-0123456789"
TOKENS = {"tokens": [
    {"name": "platform", "token": ADMIN, "role": "admin"},
    {"name": "team-a", "token": TEAM, "job_prefixes": ["team-a-"]},
]}
FENCE_KEY = "paramsched-fence-reason"


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def fence_reason(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get(FENCE_KEY, "")


def attach(stub: pb_grpc.SchedulerServiceStub, job_id: str, run: str, cfg: Any = PLATEAU,
           metadata: Any = None, epoch_length: int = 5, **kwargs: Any) -> pb.AttachJobResponse:
    return stub.AttachJob(pb.AttachJobRequest(
        job_id=job_id, spec=spec_proto(cfg, epoch_length=epoch_length), run_id=run, **kwargs),
        metadata=metadata)


def report(stub: pb_grpc.SchedulerServiceStub, job: pb.Job, iteration: int, *,
           rank: int = 0, generation: int | None = None, **kwargs: Any) -> pb.Plan:
    request = pb.ReportProgressRequest(
        job_id=job.job_id, generation=generation or job.generation, rank=rank,
        iteration=iteration, incarnation=job.incarnation, **kwargs)
    return stub.ReportProgress(request).plan


@pytest.fixture
def two_servers(redis_url: str) -> Iterator[tuple[pb_grpc.SchedulerServiceStub, ...]]:
    with serving(redis_url=redis_url, plan_size=8) as (_, a), \
            serving(redis_url=redis_url, plan_size=8) as (_, b):
        yield a, b


# -- incarnations -----------------------------------------------------------------------
def test_a_recreated_job_has_a_new_incarnation_and_fences_the_old_ranks(two_servers: Any):
    a, b = two_servers
    old = attach(a, "j", "run-1").job
    report(a, old, 3)
    assert a.DeleteJob(pb.DeleteJobRequest(job_id="j")).deleted
    new = attach(b, "j", "run-2").job
    assert new.generation == old.generation == 1 and new.incarnation != old.incarnation
    for stub in (a, b):  # both servers refuse the old incarnation, cache or not
        error = refused(lambda stub=stub: report(stub, old, 4))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert fence_reason(error) == "incarnation" and "created again" in error.details()
    assert report(b, new, 1).incarnation == new.incarnation


def test_two_servers_agree_after_delete_recreate_and_a_change(two_servers: Any):
    a, b = two_servers
    job = attach(a, "j", "run-1", WARMUP_COSINE).job
    report(b, job, 2)  # both servers cache the first incarnation's schedule
    a.RescheduleJob(pb.RescheduleJobRequest(job_id="j", start_values={"lr": 0.5}))
    before = decode(b.GetValues(pb.GetValuesRequest(job_id="j", start_iteration=0)).plan)
    a.DeleteJob(pb.DeleteJobRequest(job_id="j"))
    attach(a, "j", "run-2", WARMUP_COSINE)
    a.RescheduleJob(pb.RescheduleJobRequest(job_id="j", start_values={"lr": 0.25}))
    va = decode(a.GetValues(pb.GetValuesRequest(job_id="j")).plan)
    vb = decode(b.GetValues(pb.GetValuesRequest(job_id="j")).plan)
    assert va == vb != before
    assert va[-1][0]["lr"] == 0.25


def test_a_job_lost_by_the_store_is_detected_not_recreated(redis_url: str):
    with serving(redis_url=redis_url, plan_size=8) as (_, stub):
        job = attach(stub, "j", "run-1").job
        report(stub, job, 2)
        redis.Redis.from_url(redis_url).flushall()
        error = refused(lambda: report(stub, job, 3))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert fence_reason(error) == "lost" and "gone from the job store" in error.details()
        assert refused(lambda: stub.GetJob(pb.GetJobRequest(job_id="j"))).code() == \
            grpc.StatusCode.NOT_FOUND


def test_the_client_of_a_recreated_job_raises_job_replaced(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=4) as (server, stub):
        client = Client(server.target, plan_size=4, wait_timeout=10)
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        client.attach(opt, "j", WARMUP_COSINE, epoch_length=5, max_epochs=4)
        stub.DeleteJob(pb.DeleteJobRequest(job_id="j"))
        attach(stub, "j", "other-run", WARMUP_COSINE)
        with pytest.raises(JobReplacedError, match="deleted and created again"):
            for _ in range(20):
                opt.step()
        assert isinstance(JobReplacedError("x"), StaleGenerationError)
        client.close()


# -- runs ---------------------------------------------------------------------------------
def checkpoint(stub: pb_grpc.SchedulerServiceStub, job: pb.Job, iteration: int,
               metadata: Any = None) -> str:
    return stub.GetState(pb.GetStateRequest(job_id=job.job_id, iteration=iteration),
                         metadata=metadata).state_json


def test_a_second_run_resuming_one_checkpoint_is_a_new_generation(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=8) as (_, stub):
        job = attach(stub, "j", "run-1", epoch_length=5).job
        report(stub, job, 5)
        state = checkpoint(stub, job, 5)  # saved at the end of epoch 0, before its decision

        def resume(run: str) -> pb.LoadStateResponse:
            return stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=state, run_id=run))

        run2 = resume("run-2")
        assert run2.resumed and run2.job.generation == 2
        assert not resume("run-2").resumed  # another rank of run 2: the same generation
        bad = pb.ReportProgressRequest(job_id="j", generation=2, iteration=5, epoch_end=0,
                                       has_metrics=True, incarnation=run2.job.incarnation)
        bad.metrics["loss"] = 10.0
        stub.ReportProgress(bad)  # run 2's decision: no improvement... then it crashes
        run3 = resume("run-3")
        assert run3.resumed and run3.job.generation == 3
        error = refused(lambda: report(stub, run2.job, 6))  # run 2's straggler
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        good = pb.ReportProgressRequest(job_id="j", generation=3, iteration=5, epoch_end=0,
                                        has_metrics=True, incarnation=run3.job.incarnation)
        good.metrics["loss"] = 1.0
        plan = stub.ReportProgress(good).plan
        assert decode(plan)[0][0]["lr"] == 0.1  # run 3's own decision, not run 2's
        history = [e.action for e in stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j"))
                   .entries]
        assert history.count("resume") == 2


def test_a_new_run_on_a_job_with_progress_must_resume_or_start_over(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=8) as (_, stub):
        job = attach(stub, "j", "run-1").job
        report(stub, job, 3)
        again = attach(stub, "j", "run-2")
        assert again.resume_required and again.plan.num_iterations == 0
        assert stub.GetJob(pb.GetJobRequest(job_id="j")).job.generation == 1  # untouched
        over = stub.AttachJob(pb.AttachJobRequest(job_id="j", run_id="run-2", start_over=True))
        assert over.job.generation == 2 and over.plan.start_iteration == 0
        assert list(over.job.progress) == [pb.RankProgress(rank=0, iteration=0)]
        joined = stub.AttachJob(pb.AttachJobRequest(job_id="j", run_id="run-2", rank=0,
                                                    start_over=True))
        assert joined.job.generation == 2  # the run's other ranks share the generation
        assert refused(lambda: report(stub, job, 4)).code() == \
            grpc.StatusCode.FAILED_PRECONDITION
        actions = [e.action for e in stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j"))
                   .entries]
        assert actions == ["start_over"]


def test_a_new_run_on_an_untouched_job_takes_it_over_in_a_new_generation(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=8) as (_, stub):
        first = attach(stub, "j", "run-1").job
        second = attach(stub, "j", "run-2", world_size=2)
        assert not second.resume_required and second.job.generation == 2
        assert second.job.world_size == 2 and second.job.run_id == "run-2"
        assert refused(lambda: report(stub, first, 1)).code() == \
            grpc.StatusCode.FAILED_PRECONDITION


def test_the_client_says_resume_required_until_it_loads_or_starts_over(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=4) as (server, _):
        def optimizer() -> torch.optim.Optimizer:
            return torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)

        with Client(server.target, plan_size=4, wait_timeout=10) as client:
            opt = optimizer()
            first = client.attach(opt, "j", WARMUP_COSINE, epoch_length=5, max_epochs=4,
                                  run_id="run-1")
            for _ in range(6):
                opt.step()
            saved = first.state_dict()
            first.detach()
            for how in ("load", "start_over"):
                opt2 = optimizer()
                handle = client.attach(opt2, "j", WARMUP_COSINE, epoch_length=5, max_epochs=4,
                                       run_id=f"run-{how}")
                assert handle.resume_required
                with pytest.raises(ResumeRequiredError, match="load_state_dict"):
                    opt2.step()
                with pytest.raises(ResumeRequiredError):
                    handle.state_dict()
                if how == "load":
                    handle.load_state_dict(saved)
                    assert handle.iteration == 6
                else:
                    handle.start_over()
                    assert handle.iteration == 0
                assert not handle.resume_required
                opt2.step()
                handle.detach()


def test_ranks_without_a_process_group_must_name_their_run(tmp_path: Path):
    with serving(data_dir=tmp_path / "d") as (server, _), Client(server.target) as client:
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        os.environ.pop("PARAMSCHED_RUN_ID", None)
        with pytest.raises(ValueError, match="run_id"):
            client.attach(opt, "j", WARMUP_COSINE, epoch_length=5, max_epochs=4, rank=1,
                          world_size=2)


# -- ranks and world sizes ---------------------------------------------------------------
def test_ranks_outside_the_world_size_are_refused(tmp_path: Path):
    with serving(data_dir=tmp_path / "d") as (_, stub):
        job = attach(stub, "j", "run-1", world_size=2).job
        for rank in (2, 5, 2**31 - 1):
            error = refused(lambda rank=rank: report(stub, job, 1, rank=rank))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "rank" in error.details()
        error = refused(lambda: attach(stub, "j", "run-1", world_size=8, rank=3))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "world_size" in error.details() and "fixed per run" in error.details()
        assert [p.rank for p in stub.GetJob(pb.GetJobRequest(job_id="j")).job.progress] == [0]


# -- status codes with one meaning ------------------------------------------------------
def test_each_refusal_has_its_own_code(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=8) as (_, stub):
        spec = spec_proto(WARMUP_COSINE)
        spec.max_jump_factor = 2.0
        job = stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec, run_id="r")).job
        early = refused(lambda: stub.RescheduleJob(pb.RescheduleJobRequest(
            job_id="j", from_iteration=3, start_values={"lr": 0.05})))
        assert early.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "from_iteration" in early.details()
        jump = refused(lambda: stub.RescheduleJob(pb.RescheduleJobRequest(
            job_id="j", start_values={"lr": 5.0})))
        assert jump.code() == grpc.StatusCode.INVALID_ARGUMENT and "force" in jump.details()
        stale = refused(lambda: report(stub, job, 1, generation=7))
        assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert fence_reason(stale) == "generation"


# -- checkpoints: signed, validated, the service's own -----------------------------------
@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[InProcessServer, pb_grpc.SchedulerServiceStub]]:
    server = InProcessServer(data_dir=tmp_path / "d", tokens_inline=json.dumps(TOKENS),
                             plan_size=8).start()
    channel = grpc.insecure_channel(server.target)
    yield server, pb_grpc.SchedulerServiceStub(channel)
    channel.close()
    server.stop()


def _edit(state_json: str, **changes: Any) -> str:
    envelope = json.loads(state_json)
    payload = json.loads(envelope["payload"])
    payload.update(changes)
    envelope["payload"] = json.dumps(payload)
    return json.dumps(envelope)


def test_a_job_token_cannot_rewrite_its_job_with_an_edited_state(secured: Any):
    _, stub = secured
    team = bearer(TEAM)
    spec = spec_proto(WARMUP_COSINE)
    spec.bounds["lr"].max = 0.2
    job = stub.AttachJob(pb.AttachJobRequest(job_id="team-a-1", spec=spec, run_id="r"),
                         metadata=team).job
    state = checkpoint(stub, job, 0, team)
    assert json.loads(state)["signature"]
    before = stub.GetJob(pb.GetJobRequest(job_id="team-a-1"), metadata=team).job
    payload = json.loads(json.loads(state)["payload"])
    forged_spec = {k: v for k, v in payload["spec"].items() if k != "bounds"}
    too_long = dict(payload["spec"], max_iters=10**15, max_epochs=None)
    error = refused(lambda: stub.LoadState(pb.LoadStateRequest(
        job_id="team-a-1", state_json=_edit(state, spec=too_long)), metadata=team))
    assert "exceeds the limit max_iters" in error.details()
    change = {"from_iteration": 10, "mode": "replace", "param_scheduler": [],
              "start_values": {"lr": 50.0}}
    audit = [{"time": 1.0, "principal": "platform", "action": "set", "iteration": 10,
              "generation": 1, "details": {}, "reason": "approved by security",
              "before": [], "after": []}]
    for forged in (_edit(state, changes=[change]), _edit(state, spec=forged_spec),
                   _edit(state, audit=audit)):
        error = refused(lambda forged=forged: stub.LoadState(
            pb.LoadStateRequest(job_id="team-a-1", state_json=forged, run_id="r2"),
            metadata=team))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "state.signature" in error.details() and "edited" in error.details()
        denied = refused(lambda forged=forged: stub.LoadState(
            pb.LoadStateRequest(job_id="team-a-1", state_json=forged, allow_unsigned=True),
            metadata=team))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stub.GetJob(pb.GetJobRequest(job_id="team-a-1"), metadata=team).job == before
    # The genuine state loads; an admin may load an edited one, on the record.
    assert stub.LoadState(pb.LoadStateRequest(job_id="team-a-1", state_json=state,
                                              run_id="r2"), metadata=team).resumed
    edited = _edit(state, changes=[dict(change, start_values={"lr": 0.1})])
    stub.LoadState(pb.LoadStateRequest(job_id="team-a-1", state_json=edited, run_id="r3",
                                       allow_unsigned=True), metadata=bearer(ADMIN))
    last = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="team-a-1"),
                              metadata=bearer(ADMIN)).entries[-1]
    assert last.action == "resume" and last.principal == "platform"
    assert json.loads(last.details_json)["allow_unsigned"] is True


def test_an_unsigned_or_v1_state_is_refused_with_auth_and_says_how_to_migrate(secured: Any):
    _, stub = secured
    team = bearer(TEAM)
    job = stub.AttachJob(pb.AttachJobRequest(job_id="team-a-2", spec=spec_proto(PLATEAU),
                                             run_id="r"), metadata=team).job
    signed = json.loads(checkpoint(stub, job, 0, team))
    unsigned = json.dumps(dict(signed, key_id="", signature=""))
    payload = json.loads(signed["payload"])
    v1 = json.dumps({"format": 1, "job_id": "team-a-2", "generation": 1, "iteration": 0,
                     "spec": payload["spec"], "decisions": {}, "overrides": [], "audit": []})
    for state in (unsigned, v1):
        error = refused(lambda state=state: stub.LoadState(
            pb.LoadStateRequest(job_id="team-a-2", state_json=state), metadata=team))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not signed" in error.details() and "allow_unsigned" in error.details()
    response = stub.LoadState(pb.LoadStateRequest(job_id="team-a-2", state_json=v1,
                                                  allow_unsigned=True), metadata=bearer(ADMIN))
    assert response.resumed


def test_a_state_signed_by_a_rotated_out_key_is_refused_and_an_old_key_still_verifies(
        tmp_path: Path):
    (tmp_path / "old").mkdir()
    old_keys = write_state_keys(tmp_path / "old", "k-old")
    with serving(data_dir=tmp_path / "a", tokens_inline=json.dumps(TOKENS),
                 state_key_file=old_keys) as (_, stub):
        job = stub.AttachJob(pb.AttachJobRequest(job_id="team-a-3", spec=spec_proto(PLATEAU),
                                                 run_id="r"), metadata=bearer(TEAM)).job
        state = checkpoint(stub, job, 0, bearer(TEAM))
    (tmp_path / "both").mkdir()
    (tmp_path / "new").mkdir()
    rotated = write_state_keys(tmp_path / "both", "k-new", "k-old")
    replaced = write_state_keys(tmp_path / "new", "k-new")
    request = pb.LoadStateRequest(job_id="team-a-3", state_json=state, run_id="r2")
    with serving(data_dir=tmp_path / "b", tokens_inline=json.dumps(TOKENS),
                 state_key_file=rotated) as (_, stub):
        assert stub.LoadState(request, metadata=bearer(TEAM)).resumed
    with serving(data_dir=tmp_path / "c", tokens_inline=json.dumps(TOKENS),
                 state_key_file=replaced) as (_, stub):
        error = refused(lambda: stub.LoadState(request, metadata=bearer(TEAM)))
        assert "key this server does not have" in error.details()


def test_another_jobs_checkpoint_needs_fork(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=8) as (_, stub):
        a = attach(stub, "job-a", "r", WARMUP_COSINE).job
        attach(stub, "job-b", "r", PLATEAU)
        state = checkpoint(stub, a, 4)
        before = stub.GetJob(pb.GetJobRequest(job_id="job-b")).job
        error = refused(lambda: stub.LoadState(pb.LoadStateRequest(job_id="job-b",
                                                                   state_json=state)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "state.job_id" in error.details() and "fork=True" in error.details()
        assert stub.GetJob(pb.GetJobRequest(job_id="job-b")).job == before
        forked = stub.LoadState(pb.LoadStateRequest(job_id="job-b", state_json=state, fork=True,
                                                     run_id="r2"))
        assert forked.resumed and list(forked.job.params) == list(a.params)
        entry = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="job-b")).entries[-1]
        assert json.loads(entry.details_json)["forked_from"] == "job-a"


@pytest.mark.parametrize(("edit", "field"), [
    ({"iteration": True}, "state.iteration"),
    ({"iteration": 10**12}, "state.iteration"),
    ({"generation": 2**63}, "state.generation"),
    ({"generation": 0}, "state.generation"),
    ({"decisions": {"-3": None}}, "state.decisions"),
    ({"decisions": {" 1 ": None}}, "state.decisions"),
    ({"decisions": {"1000000000000": None}}, "state.decisions"),
    ({"audit": [{"time": float("nan")}]}, "state.audit[0]"),
    ({"audit": [{"time": 1.0, "principal": "p", "action": "set", "iteration": 0,
                 "generation": 1, "details": {}, "reason": "", "before": [{"lr": "x"}],
                 "after": []}]}, "state.audit[0].before[0]"),
    ({"changes": [{"from_iteration": 4, "mode": "replace", "resolved": [
        {"lr": float("inf"), "momentum": 0.9}]}]}, "state.changes[0].resolved[0].lr"),
    ({"changes": [{"from_iteration": 4, "mode": "stretch", "max_iters": 10**15}]},
     "state.changes[0].max_iters"),
    ({"job_id": "bad{id}"}, "state.job_id"),
    ({"extra": 1}, "state.payload"),
])
def test_a_malformed_state_is_refused_naming_the_field_and_changes_nothing(
        tmp_path: Path, edit: dict[str, Any], field: str):
    with serving(data_dir=tmp_path / "d", plan_size=8) as (_, stub):
        job = attach(stub, "j", "r", WARMUP_COSINE, epoch_length=5).job
        report(stub, job, 7)
        state = checkpoint(stub, job, 7)
        before = stub.GetJob(pb.GetJobRequest(job_id="j")).job
        trail = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries \
            if before.num_changes else []
        error = refused(lambda: stub.LoadState(pb.LoadStateRequest(
            job_id="j", state_json=_edit(state, **edit), run_id="r2")))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert field in error.details()
        assert stub.GetJob(pb.GetJobRequest(job_id="j")).job == before
        assert list(trail) == []


def test_serve_refuses_tokens_without_a_state_key(tmp_path: Path):
    import asyncio
    config = ServerConfig(port=0, data_dir=tmp_path / "d", tokens_inline=json.dumps(TOKENS))
    with pytest.raises(StateKeyError, match="state-key-file"):
        asyncio.run(build_parts(config))


def test_the_client_refuses_an_unknown_state_format_and_reads_v1(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=4) as (server, _), \
            Client(server.target, plan_size=4, wait_timeout=10) as client:
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
        handle = client.attach(opt, "j", WARMUP_COSINE, epoch_length=5, max_epochs=4)
        with pytest.raises(ValueError, match="unknown paramsched state format"):
            handle.load_state_dict({"format": "paramsched.schedule/v9", "state_json": "{}"})
        with pytest.raises(InvalidArgumentError, match=r"state\.format"):
            handle.load_state_dict({"format": "paramsched.schedule/v1",
                                    "state_json": json.dumps({"format": 7})})


# -- local files ---------------------------------------------------------------------------
def test_the_embedded_store_is_private_whatever_the_umask(tmp_path: Path):
    old = os.umask(0o022)
    try:
        store = EmbeddedJobStore(tmp_path / "fresh")
        assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "fresh" / DB_FILENAME).stat().st_mode) == 0o600
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o775)
        os.chmod(shared, 0o2775)  # a Kubernetes fsGroup volume
        second = EmbeddedJobStore(shared)
        assert second.path.parent == shared / "private"
        assert stat.S_IMODE(second.path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(second.path.stat().st_mode) == 0o600
        open_ = tmp_path / "open"
        open_.mkdir()
        os.chmod(open_, 0o777)
        with pytest.raises(StoreConfigError, match="world-writable"):
            EmbeddedJobStore(open_)
    finally:
        os.umask(old)
    import asyncio
    asyncio.run(store.close())
    asyncio.run(second.close())


def test_a_group_writable_data_dir_is_warned_about(tmp_path: Path, caplog: Any):
    folder = tmp_path / "group"
    folder.mkdir()
    os.chmod(folder, 0o770)
    with caplog.at_level(logging.WARNING, logger="paramsched.store"):
        store = EmbeddedJobStore(folder)
    assert "group-writable" in caplog.text
    import asyncio
    asyncio.run(store.close())


def test_metrics_bind_loopback_by_default():
    assert ServerConfig().metrics_host == "127.0.0.1"
    from paramsched.server.app import make_parser
    args = make_parser().parse_args(["serve"])
    assert args.metrics_host == "127.0.0.1"


# -- fuzz: every reply is OK or a documented code, and a refusal changes nothing -----
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
              grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND}


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*prefix, i))
    return out


def _replace(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replace(data[path[0]], path[1:], value)
    return copy


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with serving(data_dir=tmp_path_factory.mktemp("fuzz"), plan_size=8) as (_, stub):
        job = attach(stub, "fuzz", "r", WARMUP_COSINE, epoch_length=5).job
        report(stub, job, 6)
        stub.RescheduleJob(pb.RescheduleJobRequest(job_id="fuzz", start_values={"lr": 0.05}))
        yield stub, checkpoint(stub, job, 6)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_states_are_refused_cleanly_or_load(fuzz_server: Any, data: Any):
    stub, state = fuzz_server
    envelope = json.loads(state)
    payload = json.loads(envelope["payload"])
    path = data.draw(st.sampled_from(_paths(payload)[1:]))
    mutated = _replace(payload, path, data.draw(JSON_VALUES))
    envelope = dict(envelope, payload=json.dumps(mutated), key_id="", signature="")
    before = stub.GetJob(pb.GetJobRequest(job_id="fuzz")).job
    history = list(stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="fuzz")).entries)
    try:
        response = stub.LoadState(pb.LoadStateRequest(
            job_id="fuzz", state_json=json.dumps(envelope), run_id="fuzz-run", fork=True))
    except grpc.RpcError as exc:
        assert exc.code() in DOCUMENTED, (path, exc.details())
        assert stub.GetJob(pb.GetJobRequest(job_id="fuzz")).job == before
        assert list(stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="fuzz")).entries) \
            == history
    else:
        assert response.job.job_id == "fuzz"
    stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="fuzz"))  # never INTERNAL afterwards


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_reschedules_are_refused_cleanly_or_apply(fuzz_server: Any, data: Any):
    stub, _ = fuzz_server
    configs = data.draw(st.lists(st.dictionaries(
        st.sampled_from(["type", "by_epoch", "begin", "end", "factor", "gamma", "T_max",
                         "param_name", "eta_min"]), JSON_VALUES, max_size=4), max_size=2))
    request = pb.RescheduleJobRequest(
        job_id="fuzz", dry_run=data.draw(st.booleans()),
        mode=data.draw(st.sampled_from([0, 1, 2])),
        param_scheduler_json=json.dumps(configs),
        start_values=data.draw(st.dictionaries(st.sampled_from(["lr", "momentum", "x"]),
                                               st.floats(allow_nan=True), max_size=2)),
        action=data.draw(st.sampled_from(["", "set", "BAD ACTION", "x" * 40])),
        reason=data.draw(st.text(max_size=20)))
    if data.draw(st.booleans()):
        request.max_iters = data.draw(st.integers(-5, 2**62))
    if data.draw(st.booleans()):
        request.from_iteration = data.draw(st.integers(-5, 2**62))
    before = stub.GetJob(pb.GetJobRequest(job_id="fuzz")).job
    try:
        stub.RescheduleJob(request)
    except grpc.RpcError as exc:
        assert exc.code() in DOCUMENTED | {grpc.StatusCode.ABORTED}, exc.details()
        after = stub.GetJob(pb.GetJobRequest(job_id="fuzz")).job
        assert after.num_changes == before.num_changes


@pytest.mark.timeout(120)
def test_the_bounds_check_costs_the_changed_range_not_the_jobs_length(tmp_path: Path):
    with serving(data_dir=tmp_path / "d", plan_size=8) as (_, stub):
        spec = spec_proto([dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=10)],
                          epoch_length=None, max_epochs=None, max_iters=10**9)
        spec.bounds["lr"].max = 0.2
        stub.AttachJob(pb.AttachJobRequest(job_id="long", spec=spec, run_id="r"))
        applied = stub.RescheduleJob(pb.RescheduleJobRequest(
            job_id="long", start_values={"lr": 0.15}, action="set"))  # 10^9 iterations held
        assert applied.applied
        decay = [dict(type="LinearLR", start_factor=1.0, end_factor=0.5, by_epoch=False,
                      end=1000)]
        error = refused(lambda: stub.RescheduleJob(pb.RescheduleJobRequest(
            job_id="long", param_scheduler_json=json.dumps(decay), start_values={"lr": 0.5})))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "bounds.lr" in error.details()


# -- what earlier versions wrote keeps working -----------------------------------------
OLD_SCHEMA = """
CREATE TABLE jobs (job_id TEXT PRIMARY KEY, spec TEXT NOT NULL, spec_hash TEXT NOT NULL,
    generation INTEGER NOT NULL, version INTEGER NOT NULL, world_size INTEGER NOT NULL,
    created_at REAL NOT NULL, issued_until INTEGER NOT NULL, resumed_from TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE progress (job_id TEXT NOT NULL, rank INTEGER NOT NULL,
    iterations INTEGER NOT NULL, PRIMARY KEY (job_id, rank)) WITHOUT ROWID;
CREATE TABLE decisions (job_id TEXT NOT NULL, epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (job_id, epoch)) WITHOUT ROWID;
CREATE TABLE changes (job_id TEXT NOT NULL, seq INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)) WITHOUT ROWID;
CREATE TABLE audit (job_id TEXT NOT NULL, seq INTEGER NOT NULL, entry TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)) WITHOUT ROWID;
"""


def test_an_embedded_store_of_the_previous_version_is_migrated_in_place(tmp_path: Path):
    import sqlite3

    from paramsched.server.grpc.servicer import spec_to_dict
    from paramsched.server.service.inputs import parse_spec
    from paramsched.server.store import canonical_json, content_hash

    folder = tmp_path / "old"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)  # as the previous version left it
    spec = parse_spec(spec_to_dict(spec_proto(WARMUP_COSINE)), stored=True).to_dict()
    with sqlite3.connect(folder / DB_FILENAME) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute("INSERT INTO jobs VALUES ('j', ?, ?, 1, 3, 0, 1.0, 8, '')",
                     (canonical_json(spec), content_hash(spec)))
        conn.execute("INSERT INTO progress VALUES ('j', 0, 4)")
    with serving(data_dir=folder, plan_size=8) as (_, stub):
        job = stub.GetJob(pb.GetJobRequest(job_id="j")).job
        assert (job.incarnation, job.run_id, job.generation) == ("", "", 1)
        plan = stub.ReportProgress(pb.ReportProgressRequest(job_id="j", generation=1,
                                                            iteration=5)).plan
        assert plan.start_iteration == 5 and plan.incarnation == ""
    assert stat.S_IMODE((folder / DB_FILENAME).stat().st_mode) == 0o600


def test_a_v1_checkpoint_resumes_into_an_empty_server_without_auth(tmp_path: Path):
    with serving(data_dir=tmp_path / "a", plan_size=8) as (_, stub):
        job = attach(stub, "j", "r", WARMUP_COSINE).job
        report(stub, job, 6)
        payload = json.loads(json.loads(checkpoint(stub, job, 6))["payload"])
        expected = decode(stub.GetValues(pb.GetValuesRequest(job_id="j")).plan)
    v1 = json.dumps({"format": 1, "job_id": "j", "generation": 1, "iteration": 6,
                     "spec": payload["spec"], "decisions": {}, "overrides": [], "audit": []})
    with serving(data_dir=tmp_path / "b", plan_size=8) as (_, stub):
        loaded = stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=v1, run_id="r2"))
        assert loaded.resumed and loaded.plan.start_iteration == 6
        assert decode(loaded.plan) == expected[6:14]
        entry = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries[-1]
        assert json.loads(entry.details_json)["signature"] == "unsigned"


def test_a_checkpoint_with_an_idempotent_change_resumes_into_an_empty_server(tmp_path: Path):
    with serving(data_dir=tmp_path / "a", plan_size=8) as (_, stub):
        job = attach(stub, "j", "r", WARMUP_COSINE).job
        stub.RescheduleJob(pb.RescheduleJobRequest(job_id="j", start_values={"lr": 0.05},
                                                   request_id="req-1", action="set"))
        state = checkpoint(stub, job, 0)
    with serving(data_dir=tmp_path / "b", plan_size=8) as (_, stub):
        assert stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=state)).resumed
        entries = stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="j")).entries
        assert [e.action for e in entries] == ["set", "resume"]


def test_a_rank_blocked_on_a_server_that_went_down_logs_a_warning(tmp_path: Path, caplog: Any):
    from paramsched.client import ScheduleUnavailableError

    server = InProcessServer(data_dir=tmp_path / "d", plan_size=2).start()
    client = Client(server.target, plan_size=2, max_plan_size=2, prefetch_seconds=0.0,
                    wait_timeout=4.5, backoff_max=0.2)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
    client.attach(opt, "down", WARMUP_COSINE, epoch_length=5, max_epochs=4)
    target = server.target
    server.stop()
    with caplog.at_level(logging.WARNING, logger="paramsched"), \
            pytest.raises(ScheduleUnavailableError):
        for _ in range(20):
            opt.step()
    blocked = [r.getMessage() for r in caplog.records if "values of iteration" in r.getMessage()]
    assert any("still waiting for the paramsched server" in m and target in m
               for m in blocked), blocked
    client.close()
