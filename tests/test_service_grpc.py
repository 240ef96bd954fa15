"""The scheduler service through a real in-process grpc.aio server, on every store."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.server.grpc.servicer import spec_to_proto
from paramsched.server.schedules import Timeline, build_job_spec

from grpc_harness import InProcessServer, serving

WARMUP_COSINE = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, end=7),
    dict(type="CosineAnnealingLR", T_max=4, by_epoch=True, convert_to_iter_based=True),
    dict(type="StepMomentum", step_size=2, gamma=0.5),
]
PLATEAU = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=4),
    dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5),
]
GROUPS = [
    {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    {"lr": 0.01, "momentum": 0.8, "weight_decay": 0.0},
]


def spec_proto(cfg: Any, groups: list[dict[str, Any]] = GROUPS, *, epoch_length: int = 5,
               max_epochs: int | None = 4, max_iters: int | None = None) -> pb.JobSpec:
    return spec_to_proto({"param_scheduler": cfg, "initial_values": groups,
                          "epoch_length": epoch_length, "max_epochs": max_epochs,
                          "max_iters": max_iters})


def engine_values(
    cfg: Any, groups: list[dict[str, Any]] = GROUPS, decisions: Any = None, **job: Any
) -> list[list[dict[str, float]]]:
    job.setdefault("epoch_length", 5)
    if "max_iters" not in job:
        job.setdefault("max_epochs", 4)
    spec = build_job_spec(cfg, groups, **job)
    return Timeline(spec).values_range(0, spec.max_iters + 1, decisions or {}, partial=True)


def decode(plan: pb.Plan) -> list[list[dict[str, float]]]:
    params, groups = list(plan.params), plan.num_groups
    width = groups * len(params)
    out = []
    for i in range(plan.num_iterations):
        row = plan.values[i * width : (i + 1) * width]
        out.append(
            [{p: row[g * len(params) + k] for k, p in enumerate(params)} for g in range(groups)]
        )
    return out


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "redis":
        return {"redis_url": request.getfixturevalue("redis_url")}
    return {"data_dir": tmp_path / "data"}


@pytest.fixture
def stub(backend: dict[str, Any]) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with serving(plan_size=16, **backend) as (_, stub):
        yield stub


def payload_of(state_json: str) -> dict[str, Any]:
    """The signed payload of a checkpoint state (format paramsched.schedule/v2)."""
    return json.loads(json.loads(state_json)["payload"])


def with_payload(state_json: str, payload: dict[str, Any]) -> str:
    """``state_json`` with another payload (its signature no longer matches)."""
    return json.dumps(dict(json.loads(state_json), payload=json.dumps(payload)))


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# -- create / attach -----------------------------------------------------------------
def test_attach_creates_then_is_idempotent(stub: pb_grpc.SchedulerServiceStub):
    first = stub.AttachJob(pb.AttachJobRequest(job_id="j1", spec=spec_proto(WARMUP_COSINE)))
    again = stub.AttachJob(pb.AttachJobRequest(job_id="j1", spec=spec_proto(WARMUP_COSINE)))
    joined = stub.AttachJob(pb.AttachJobRequest(job_id="j1", rank=1))
    assert first.created and not again.created and not joined.created
    assert first.job.generation == again.job.generation == joined.job.generation == 1
    assert list(first.job.params) == ["lr", "momentum"]
    assert first.plan.start_iteration == 0 and first.plan.num_iterations == 16
    assert decode(first.plan) == engine_values(WARMUP_COSINE)[:16] == decode(joined.plan)


def test_attach_with_a_different_spec_shows_the_difference(stub: pb_grpc.SchedulerServiceStub):
    stub.AttachJob(pb.AttachJobRequest(job_id="j1", spec=spec_proto(WARMUP_COSINE)))
    changed = [dict(WARMUP_COSINE[0], start_factor=0.02), *WARMUP_COSINE[1:]]
    code, details = code_of(
        lambda: stub.AttachJob(pb.AttachJobRequest(job_id="j1", spec=spec_proto(changed)))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert "param_scheduler[0].start_factor" in details and "0.01" in details and "0.02" in details


def test_joining_a_missing_job_is_not_found(stub: pb_grpc.SchedulerServiceStub):
    code, details = code_of(lambda: stub.AttachJob(pb.AttachJobRequest(job_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details


# -- bad input: INVALID_ARGUMENT naming the field, nothing stored -----------------------
@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            pb.AttachJobRequest(
                job_id="bad",
                spec=spec_proto([dict(type="LinearLR", start_factor=0, by_epoch=False)]),
            ),
            "spec.param_scheduler[0].start_factor",
        ),
        (
            pb.AttachJobRequest(job_id="bad", spec=pb.JobSpec(param_scheduler_json="[{")),
            "spec.param_scheduler_json",
        ),
        (
            pb.AttachJobRequest(job_id="bad", spec=spec_proto(WARMUP_COSINE, epoch_length=0)),
            "spec.epoch_length",
        ),
        (pb.AttachJobRequest(job_id="bad{slot}", spec=spec_proto(WARMUP_COSINE)), "job_id"),
        (pb.AttachJobRequest(job_id="", spec=spec_proto(WARMUP_COSINE)), "job_id"),
        (
            pb.AttachJobRequest(job_id="bad", spec=spec_proto(WARMUP_COSINE), world_size=2, rank=2),
            "rank",
        ),
    ],
)
def test_bad_attach_is_refused_and_creates_nothing(
    stub: pb_grpc.SchedulerServiceStub, request_: pb.AttachJobRequest, field: str
):
    code, details = code_of(lambda: stub.AttachJob(request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details
    assert not stub.ListJobs(pb.ListJobsRequest()).jobs


def test_bad_reports_change_nothing(stub: pb_grpc.SchedulerServiceStub):
    stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
    before = stub.GetJob(pb.GetJobRequest(job_id="j")).job
    bad = [
        (pb.ReportProgressRequest(job_id="j", generation=1, iteration=-1), "iteration"),
        (pb.ReportProgressRequest(job_id="j", generation=1, iteration=21), "iteration"),
        (pb.ReportProgressRequest(job_id="j", generation=1, rank=-3, iteration=1), "rank"),
        (pb.ReportProgressRequest(job_id="j", generation=1, iteration=4, epoch_end=0), "epoch_end"),
        (
            pb.ReportProgressRequest(
                job_id="j",
                generation=1,
                iteration=5,
                epoch_end=0,
                has_metrics=True,
                metrics={"acc": 1.0},
            ),
            "metrics.loss",
        ),
        (
            pb.ReportProgressRequest(
                job_id="j", generation=1, iteration=5, has_metrics=True, metrics={"loss": 1.0}
            ),
            "metrics",
        ),
        (
            pb.ReportProgressRequest(job_id="j", generation=1, iteration=3, plan_size=-1),
            "plan_size",
        ),
    ]
    for request, field in bad:
        code, details = code_of(lambda r=request: stub.ReportProgress(r))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (request, details)
        assert field in details, (field, details)
    after = stub.GetJob(pb.GetJobRequest(job_id="j")).job
    assert after == before


# -- progress and plans -------------------------------------------------------------
def test_report_returns_the_plan_from_the_reported_iteration(stub: pb_grpc.SchedulerServiceStub):
    stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(WARMUP_COSINE)))
    expected = engine_values(WARMUP_COSINE)
    reply = stub.ReportProgress(
        pb.ReportProgressRequest(job_id="j", generation=1, rank=2, iteration=9, plan_size=100)
    )
    assert reply.plan.start_iteration == 9
    assert decode(reply.plan) == expected[9:21]  # clipped at max_iters (20) inclusive
    job = stub.GetJob(pb.GetJobRequest(job_id="j")).job
    # The attaching rank 0 shows up at iteration 0, rank 2 where it reported.
    assert [(p.rank, p.iteration) for p in job.progress] == [(0, 0), (2, 9)]
    assert job.issued_until == 21


def test_plan_stops_at_a_pending_plateau_decision(stub: pb_grpc.SchedulerServiceStub):
    stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
    first = stub.ReportProgress(pb.ReportProgressRequest(job_id="j", generation=1, iteration=2))
    assert first.plan.num_iterations == 3  # iterations 2, 3, 4; 5 waits for epoch 0
    assert first.plan.waits_for_epoch == 0
    # Rank 1 brings the metrics; the first writer wins, so rank 0's differing metrics
    # afterwards change nothing.
    ends = stub.ReportProgress(
        pb.ReportProgressRequest(
            job_id="j",
            generation=1,
            rank=1,
            iteration=5,
            epoch_end=0,
            has_metrics=True,
            metrics={"loss": 1.0},
        )
    )
    late = stub.ReportProgress(
        pb.ReportProgressRequest(
            job_id="j",
            generation=1,
            rank=0,
            iteration=5,
            epoch_end=0,
            has_metrics=True,
            metrics={"loss": 50.0},
        )
    )
    assert decode(ends.plan) == decode(late.plan)
    assert ends.plan.waits_for_epoch == 1 and ends.plan.num_iterations == 5
    expected = engine_values(PLATEAU, decisions={0: {"loss": 1.0}})
    assert decode(ends.plan) == expected[5:10]


def test_epoch_without_validation_is_a_decision_too(stub: pb_grpc.SchedulerServiceStub):
    stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
    reply = stub.ReportProgress(
        pb.ReportProgressRequest(
            job_id="j", generation=1, iteration=5, epoch_end=0, has_metrics=False
        )
    )
    assert reply.plan.num_iterations == 5
    assert decode(reply.plan) == engine_values(PLATEAU, decisions={0: None})[5:10]


def test_concurrent_duplicated_reordered_reports_agree(backend: dict[str, Any]):
    cfg = [*PLATEAU, dict(type="ExponentialMomentum", gamma=0.9, by_epoch=False)]
    with serving(plan_size=7, **backend) as (server, stub):
        stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(cfg, max_epochs=6)))
        seen: dict[int, list[Any]] = {}
        lock = threading.Lock()
        errors: list[BaseException] = []

        def rank_loop(rank: int) -> None:
            rng = random.Random(rank)
            channel = grpc.insecure_channel(server.target)
            local = pb_grpc.SchedulerServiceStub(channel)
            try:
                iterations = list(range(31)) * 2  # duplicates
                rng.shuffle(iterations)  # reordering
                for it in sorted(iterations, key=lambda x: x + rng.randint(-3, 3)):
                    epoch_end = it // 5 - 1 if it and it % 5 == 0 else None
                    request = pb.ReportProgressRequest(
                        job_id="j", generation=1, rank=rank, iteration=it
                    )
                    if epoch_end is not None:
                        request.epoch_end = epoch_end
                        request.has_metrics = True
                        request.metrics["loss"] = [3.0, 2.0, 2.5, 2.5, 1.0, 0.5][epoch_end] + rank
                    plan = local.ReportProgress(request).plan
                    with lock:
                        for offset, values in enumerate(decode(plan)):
                            seen.setdefault(plan.start_iteration + offset, []).append(values)
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                channel.close()

        threads = [threading.Thread(target=rank_loop, args=(r,)) for r in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for iteration, versions in seen.items():
            assert all(v == versions[0] for v in versions), iteration
        decisions = {
            int(k): v
            for k, v in payload_of(
                stub.GetState(pb.GetStateRequest(job_id="j", iteration=30)).state_json
            )["decisions"].items()
        }
        expected = engine_values(cfg, decisions=decisions, max_epochs=6)
        for iteration, versions in seen.items():
            assert versions[0] == expected[iteration]


# -- checkpoints, resume and fencing ---------------------------------------------------
def test_resume_into_a_fresh_server_with_an_empty_store(tmp_path: Path):
    with serving(data_dir=tmp_path / "a") as (_, stub):
        stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
        for epoch, loss in enumerate([2.0, 2.0]):
            stub.ReportProgress(
                pb.ReportProgressRequest(
                    job_id="j",
                    generation=1,
                    iteration=(epoch + 1) * 5,
                    epoch_end=epoch,
                    has_metrics=True,
                    metrics={"loss": loss},
                )
            )
        state = stub.GetState(pb.GetStateRequest(job_id="j", iteration=10)).state_json
        uninterrupted = decode(stub.GetValues(pb.GetValuesRequest(job_id="j")).plan)
    with serving(data_dir=tmp_path / "b") as (_, stub):
        assert not stub.ListJobs(pb.ListJobsRequest()).jobs
        loaded = stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=state))
        assert loaded.resumed and loaded.job.generation == 2
        assert loaded.plan.start_iteration == 10
        assert decode(loaded.plan) == uninterrupted[10:15]


def test_resume_fences_the_old_generation_and_is_idempotent(stub: pb_grpc.SchedulerServiceStub):
    stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(WARMUP_COSINE)))
    stub.ReportProgress(pb.ReportProgressRequest(job_id="j", generation=1, iteration=8))
    state = stub.GetState(pb.GetStateRequest(job_id="j", iteration=8)).state_json
    first = stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=state))
    second = stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=state))  # another rank
    assert first.resumed and not second.resumed
    assert first.job.generation == second.job.generation == 2
    assert decode(first.plan) == decode(second.plan) == engine_values(WARMUP_COSINE)[8:24]
    code, details = code_of(
        lambda: stub.ReportProgress(pb.ReportProgressRequest(job_id="j", generation=1, iteration=9))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "generation" in details
    stub.ReportProgress(pb.ReportProgressRequest(job_id="j", generation=2, iteration=9))
    # A fenced rank cannot save the new generation's state as its own checkpoint.
    code, details = code_of(lambda: stub.GetState(
        pb.GetStateRequest(job_id="j", iteration=9, generation=1)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "generation" in details
    assert stub.GetState(pb.GetStateRequest(job_id="j", iteration=9, generation=2)).state_json


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.pop("spec"), "state.payload"),
        (lambda s: s.update(iteration=10_000), "state.iteration"),
        (lambda s: s["spec"]["param_scheduler"][0].update(start_factor=7), "state.spec"),
        (lambda s: s.update(decisions={"0": {"acc": 1.0}}), "state.decisions"),
    ],
)
def test_bad_state_is_refused_and_changes_nothing(
    stub: pb_grpc.SchedulerServiceStub, mutate: Any, field: str
):
    stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
    state_json = stub.GetState(pb.GetStateRequest(job_id="j", iteration=3)).state_json
    state = payload_of(state_json)
    mutate(state)
    before = stub.GetJob(pb.GetJobRequest(job_id="j")).job
    code, details = code_of(
        lambda: stub.LoadState(pb.LoadStateRequest(job_id="j",
                                                   state_json=with_payload(state_json, state)))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
    assert stub.GetJob(pb.GetJobRequest(job_id="j")).job == before


# -- durability ----------------------------------------------------------------------
def test_a_restarted_server_keeps_every_job(backend: dict[str, Any]):
    with serving(**backend) as (_, stub):
        stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
        stub.ReportProgress(
            pb.ReportProgressRequest(
                job_id="j",
                generation=1,
                rank=3,
                iteration=5,
                epoch_end=0,
                has_metrics=True,
                metrics={"loss": 0.25},
            )
        )
    with serving(**backend) as (_, stub):
        job = stub.GetJob(pb.GetJobRequest(job_id="j")).job
        assert [(p.rank, p.iteration) for p in job.progress] == [(0, 0), (3, 5)]
        state = payload_of(stub.GetState(pb.GetStateRequest(job_id="j", iteration=5)).state_json)
        assert state["decisions"] == {"0": {"loss": 0.25}}


# -- jobs listing, deletion, previews ---------------------------------------------------
def test_list_pages_and_delete(stub: pb_grpc.SchedulerServiceStub):
    for name in ("a-1", "a-2", "a-3", "b-1"):
        stub.AttachJob(pb.AttachJobRequest(job_id=name, spec=spec_proto(WARMUP_COSINE)))
    page = stub.ListJobs(pb.ListJobsRequest(prefix="a-", page_size=2))
    assert [j.job_id for j in page.jobs] == ["a-1", "a-2"] and page.next_page_token
    rest = stub.ListJobs(
        pb.ListJobsRequest(prefix="a-", page_size=2, page_token=page.next_page_token)
    )
    assert [j.job_id for j in rest.jobs] == ["a-3"] and not rest.next_page_token
    assert stub.DeleteJob(pb.DeleteJobRequest(job_id="a-2")).deleted
    assert not stub.DeleteJob(pb.DeleteJobRequest(job_id="a-2")).deleted
    assert [j.job_id for j in stub.ListJobs(pb.ListJobsRequest()).jobs] == ["a-1", "a-3", "b-1"]
    code, _ = code_of(lambda: stub.GetJob(pb.GetJobRequest(job_id="a-2")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_preview_needs_no_job(stub: pb_grpc.SchedulerServiceStub):
    reply = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=spec_proto(WARMUP_COSINE)))
    assert decode(reply.plan) == engine_values(WARMUP_COSINE)
    assert not stub.ListJobs(pb.ListJobsRequest()).jobs


# -- standard services -----------------------------------------------------------------
def test_health_and_reflection(tmp_path: Path):
    server = InProcessServer(data_dir=tmp_path).start()
    try:
        channel = grpc.insecure_channel(server.target)
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "paramsched.api.v1.SchedulerService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {s.name for s in replies[0].list_services_response.service}
        assert "paramsched.api.v1.SchedulerService" in names
        channel.close()
    finally:
        server.stop()


def test_a_long_cold_replay_does_not_stall_other_requests(tmp_path: Path):
    """Loading a checkpoint far into a long job without its keyframe (an older server's
    state) replays in a worker thread; a small job's report meanwhile is answered before
    it (ordering, not a timing threshold)."""
    long_cfg = [dict(type="CosineAnnealingLR", by_epoch=False, T_max=3_000_000)]
    with serving(data_dir=tmp_path) as (_, stub):
        stub.AttachJob(pb.AttachJobRequest(job_id="long", spec=spec_proto(
            long_cfg, [{"lr": 0.1}] * 3, max_epochs=None, max_iters=3_000_000)))
        stub.AttachJob(pb.AttachJobRequest(job_id="small", spec=spec_proto(WARMUP_COSINE)))
        state = payload_of(stub.GetState(pb.GetStateRequest(job_id="long",
                                                            iteration=0)).state_json)
        state.update(iteration=2_900_000)
        state.pop("keyframe", None)
        unsigned = json.dumps({"format": "paramsched.schedule/v2", "payload": json.dumps(state),
                               "key_id": "", "signature": ""})
        far = stub.LoadState.future(pb.LoadStateRequest(job_id="long", state_json=unsigned,
                                                        run_id="r2"))
        quick = stub.ReportProgress(pb.ReportProgressRequest(job_id="small", generation=1,
                                                             iteration=3))
        assert decode(quick.plan)[0] == engine_values(WARMUP_COSINE)[3]
        assert not far.done()
        plan = far.result(timeout=120).plan
        assert plan.start_iteration == 2_900_000 and plan.num_iterations == 256


def test_build_server_returns_an_unstarted_server_on_a_free_port(tmp_path: Path):
    import asyncio

    from paramsched.server.app import ServerConfig, build_server

    async def scenario() -> None:
        server, port = await build_server(ServerConfig(port=0, data_dir=tmp_path))
        assert port > 0
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await server.stop(None)

    asyncio.run(scenario())
