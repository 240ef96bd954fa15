"""docs/PROTOCOL.md is true: a client that follows it with nothing but the generated
stubs trains, reports, ends epochs, checkpoints, resumes and reads every error as the
document says; and the document covers every RPC and every status code it promises."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from grpc_harness import InProcessServer
from test_service_grpc import GROUPS, WARMUP_COSINE, engine_values, spec_proto

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
PLATEAU = [{"type": "ReduceOnPlateauLR", "monitor": "loss", "patience": 0, "factor": 0.5}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    started = InProcessServer(data_dir=tmp_path_factory.mktemp("protocol"), plan_size=8).start()
    yield started
    started.stop()


@pytest.fixture
def stub(server: InProcessServer) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def rows(plan: pb.Plan) -> list[list[dict[str, float]]]:
    """The document's layout, literally: values[(i * num_groups + g) * len(params) + p]."""
    params, groups = list(plan.params), plan.num_groups
    return [[{params[p]: plan.values[(i * groups + g) * len(params) + p]
              for p in range(len(params))} for g in range(groups)]
            for i in range(plan.num_iterations)]


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def trailer(error: grpc.RpcError, key: str) -> Any:
    return dict(error.trailing_metadata() or ()).get(key)


def bad_request(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations, decoded the standard way."""
    status = rpc_status.from_call(error)  # checks code and message against the call's
    if status is None:
        return []
    assert status.code == error.code().value[0]
    out = []
    for detail in status.details:
        violations = error_details_pb2.BadRequest()
        assert detail.Unpack(violations)
        out += [(v.field, v.description) for v in violations.field_violations]
    return out


def test_a_training_loop_that_follows_the_document(stub: pb_grpc.SchedulerServiceStub):
    expected = engine_values(WARMUP_COSINE)
    reply = stub.AttachJob(pb.AttachJobRequest(job_id="doc-loop", spec=spec_proto(WARMUP_COSINE),
                                               world_size=1, rank=0, run_id="run-1",
                                               plan_size=6))
    job = reply.job
    assert reply.created and not reply.resume_required
    assert reply.plan.start_iteration == 0 and rows(reply.plan) == expected[:6]
    assert (reply.plan.generation, reply.plan.incarnation) == (job.generation, job.incarnation)
    assert reply.plan.max_iters == job.max_iters == 20
    assert job.issued_until == 6

    applied, done, plan = [], 0, reply.plan
    while done < job.max_iters:
        k = done - plan.start_iteration
        if not 0 <= k < plan.num_iterations:
            plan = stub.ReportProgress(pb.ReportProgressRequest(
                job_id="doc-loop", generation=job.generation, incarnation=job.incarnation,
                rank=0, iteration=done, plan_size=5)).plan
            assert plan.start_iteration == done  # starts at the reported iteration
            continue
        applied.append(rows(plan)[k])
        done += 1
    assert applied == expected[:20]
    # A duplicate or out-of-order report changes nothing.
    again = stub.ReportProgress(pb.ReportProgressRequest(
        job_id="doc-loop", generation=job.generation, rank=0, iteration=3, plan_size=4)).plan
    assert rows(again) == expected[3:7]


def test_appending_plans_with_skip_held_as_documented(stub: pb_grpc.SchedulerServiceStub):
    expected = engine_values(WARMUP_COSINE)
    job = stub.AttachJob(pb.AttachJobRequest(job_id="doc-append", spec=spec_proto(WARMUP_COSINE),
                                             world_size=1, rank=0, run_id="run-1",
                                             plan_size=6)).job
    held: list[list[dict[str, float]]] = []  # the plan held, from iteration start
    start = done = held_until = 0
    applied = []
    while done < job.max_iters:
        if done - start >= len(held) or done + 3 >= held_until:  # refill before it runs out
            plan = stub.ReportProgress(pb.ReportProgressRequest(
                job_id="doc-append", generation=job.generation, incarnation=job.incarnation,
                rank=0, iteration=done, plan_size=6, held_until=held_until,
                skip_held=True)).plan
            if held_until > done:  # the reply continues the held plan: append it
                assert plan.start_iteration == min(held_until, done + 6)
                held = held[done - start:] + rows(plan)
            else:
                assert plan.start_iteration == done
                held = rows(plan)
            start, held_until = done, done + len(held)
        applied.append(held[done - start])
        done += 1
    assert applied == expected[:20]
    # A rank that holds all it asks for gets nothing; skip_held = false, a whole plan.
    empty = stub.ReportProgress(pb.ReportProgressRequest(
        job_id="doc-append", generation=job.generation, rank=0, iteration=3, plan_size=4,
        held_until=10, skip_held=True)).plan
    assert (empty.start_iteration, empty.num_iterations) == (7, 0)
    whole = stub.ReportProgress(pb.ReportProgressRequest(
        job_id="doc-append", generation=job.generation, rank=0, iteration=3, plan_size=4,
        held_until=10)).plan
    assert rows(whole) == expected[3:7]


def test_a_plan_waits_for_an_epochs_metrics_and_one_report_unlocks_it(
        stub: pb_grpc.SchedulerServiceStub):
    spec = spec_proto(PLATEAU, epoch_length=5, max_epochs=4)
    reply = stub.AttachJob(pb.AttachJobRequest(job_id="doc-plateau", spec=spec, world_size=1,
                                               run_id="run-1", plan_size=50))
    plan = reply.plan
    assert plan.HasField("waits_for_epoch") and plan.waits_for_epoch == 0
    assert plan.start_iteration + plan.num_iterations == 5  # stops at the epoch end
    plan = stub.ReportProgress(pb.ReportProgressRequest(
        job_id="doc-plateau", generation=1, rank=0, iteration=5, epoch_end=0,
        metrics={"loss": 1.0}, has_metrics=True, plan_size=50)).plan
    assert plan.start_iteration == 5 and plan.num_iterations >= 5
    error = refused(lambda: stub.ReportProgress(pb.ReportProgressRequest(
        job_id="doc-plateau", generation=1, rank=0, iteration=6, metrics={"loss": 1.0},
        has_metrics=True)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_checkpoint_resume_fencing_and_a_new_run(stub: pb_grpc.SchedulerServiceStub,
                                                 tmp_path: Path):
    expected = engine_values(WARMUP_COSINE)
    job = stub.AttachJob(pb.AttachJobRequest(job_id="doc-resume", spec=spec_proto(WARMUP_COSINE),
                                             world_size=1, run_id="run-1")).job
    stub.ReportProgress(pb.ReportProgressRequest(job_id="doc-resume", generation=1, rank=0,
                                                 iteration=9, incarnation=job.incarnation))
    state = stub.GetState(pb.GetStateRequest(job_id="doc-resume", iteration=9, generation=1,
                                             incarnation=job.incarnation)).state_json

    second = stub.AttachJob(pb.AttachJobRequest(job_id="doc-resume", world_size=1,
                                                run_id="run-2"))
    assert second.resume_required and second.plan.num_iterations == 0

    # ... even into an empty store: a fresh server.
    fresh = InProcessServer(data_dir=tmp_path, plan_size=8).start()
    try:
        with grpc.insecure_channel(fresh.target) as channel:
            other = pb_grpc.SchedulerServiceStub(channel)
            loaded = other.LoadState(pb.LoadStateRequest(job_id="doc-resume", state_json=state,
                                                         run_id="run-2", world_size=1))
            assert loaded.resumed and loaded.plan.start_iteration == 9
            assert rows(loaded.plan) == expected[9:9 + loaded.plan.num_iterations]
    finally:
        fresh.stop()

    loaded = stub.LoadState(pb.LoadStateRequest(job_id="doc-resume", state_json=state,
                                                run_id="run-2", world_size=1))
    assert loaded.job.generation == 2 and loaded.plan.start_iteration == 9
    again = stub.LoadState(pb.LoadStateRequest(job_id="doc-resume", state_json=state,
                                               run_id="run-2", world_size=1, rank=0))
    assert not again.resumed and again.job.generation == 2

    stale = refused(lambda: stub.ReportProgress(pb.ReportProgressRequest(
        job_id="doc-resume", generation=1, rank=0, iteration=10)))
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert trailer(stale, "paramsched-fence-reason") == "generation"
    replaced = refused(lambda: stub.ReportProgress(pb.ReportProgressRequest(
        job_id="doc-resume", generation=2, rank=0, iteration=10, incarnation="another")))
    assert replaced.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert trailer(replaced, "paramsched-fence-reason") == "incarnation"

    tampered = json.loads(state)
    tampered["payload"] = tampered["payload"][:-2] + ("A" if tampered["payload"][-2] != "A"
                                                      else "B") + tampered["payload"][-1]
    error = refused(lambda: stub.LoadState(pb.LoadStateRequest(
        job_id="doc-resume", state_json=json.dumps(tampered), run_id="run-3", world_size=1)))
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)


def test_errors_name_their_field_in_the_message_and_as_bad_request_details(
        stub: pb_grpc.SchedulerServiceStub):
    error = refused(lambda: stub.AttachJob(pb.AttachJobRequest(
        job_id="doc-bad", spec=spec_proto([{"type": "CosineAnealingLR"}]))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    ((field, description),) = bad_request(error)
    assert field == "spec.param_scheduler[0].type" and "CosineAnnealingLR" in description
    assert error.details().startswith(f"invalid {field}: ")

    stub.AttachJob(pb.AttachJobRequest(job_id="doc-range", spec=spec_proto(WARMUP_COSINE),
                                       world_size=1, run_id="run-1", plan_size=8))
    early = refused(lambda: stub.RescheduleJob(pb.RescheduleJobRequest(
        job_id="doc-range", from_iteration=2, params=["lr"])))
    assert early.code() == grpc.StatusCode.OUT_OF_RANGE
    assert [f for f, _ in bad_request(early)] == ["from_iteration"]

    assert refused(lambda: stub.AttachJob(pb.AttachJobRequest(
        job_id="doc-range", spec=spec_proto([{"type": "ConstantLR"}]), run_id="run-1"))
    ).code() == grpc.StatusCode.ALREADY_EXISTS
    missing = refused(lambda: stub.GetJob(pb.GetJobRequest(job_id="doc-none")))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and bad_request(missing) == []


def test_admin_calls_as_documented(stub: pb_grpc.SchedulerServiceStub):
    for n in range(3):
        stub.AttachJob(pb.AttachJobRequest(job_id=f"doc-page-{n}", spec=spec_proto(WARMUP_COSINE),
                                           world_size=1, run_id="run-1"))
    seen, token = [], ""
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(prefix="doc-page-", page_size=2,
                                                page_token=token))
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["doc-page-0", "doc-page-1", "doc-page-2"]
    whole = stub.GetValues(pb.GetValuesRequest(job_id="doc-page-0")).plan
    assert rows(whole) == engine_values(WARMUP_COSINE)  # stop 0: to the end, max_iters included
    preview = stub.PreviewSchedule(pb.PreviewScheduleRequest(spec=spec_proto(WARMUP_COSINE))).plan
    assert rows(preview) == engine_values(WARMUP_COSINE)
    assert "doc-preview" not in seen


def test_the_document_covers_every_rpc_and_every_status_code_it_promises():
    text = DOC.read_text()
    service = pb.DESCRIPTOR.services_by_name["SchedulerService"]
    missing = [m.name for m in service.methods if f"`{m.name}" not in text]
    assert not missing, missing
    table = re.findall(r"^\| `([A-Z_]+)` \|", text, flags=re.M)
    assert set(table) == {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "FAILED_PRECONDITION",
                          "INVALID_ARGUMENT", "OUT_OF_RANGE", "NOT_FOUND", "ALREADY_EXISTS",
                          "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}
    # Every budget the server refuses with RESOURCE_EXHAUSTED is named in its row.
    row = next(line for line in text.splitlines() if line.startswith("| `RESOURCE_EXHAUSTED`"))
    server = DOC.parent.parent / "server"
    budgets = {b for source in server.rglob("*.py")
               for b in re.findall(r'budget="(\w+)"', source.read_text())}
    assert {"max_values_cells", "max_plan_size"} <= budgets
    for budget in budgets:
        assert f"`{budget}`" in row, budget
    assert "values[(i * num_groups + g) * len(params) + p]" in text
    for field in pb.Plan.DESCRIPTOR.fields:
        assert field.name in text, field.name
    from paramsched.client import errors

    retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.ABORTED}
    assert set(errors.RETRYABLE_CODES) == retryable
    assert "paramsched-fence-reason" in text and errors.FENCE_REASON_KEY in text
    assert GROUPS  # the jobs above use the shared two-group fixture
