"""The Python admin API: every operation the CLI has, as ``Client`` methods with typed,
frozen results, against a real in-process server; and what the client says while it
waits for a server."""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from paramsched import Client
from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.client import (
    AuditEntry,
    ChangeResult,
    InvalidArgumentError,
    JobFinishedError,
    JobInfo,
    JobNotFoundError,
    JobSpecMismatchError,
    ScheduleUnavailableError,
    Values,
    _rpc,
)

from grpc_harness import InProcessServer
from optimizers import make_optimizer
from test_service_grpc import GROUPS, WARMUP_COSINE, engine_values, spec_proto


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    started = InProcessServer(data_dir=tmp_path_factory.mktemp("admin-data"), plan_size=8).start()
    yield started
    started.stop()


@pytest.fixture
def client(server: InProcessServer) -> Iterator[Client]:
    with Client(server.target, wait_timeout=10.0) as c:
        yield c


@pytest.fixture
def stub(server: InProcessServer) -> Iterator[pb_grpc.SchedulerServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


def new_job(stub: pb_grpc.SchedulerServiceStub, job_id: str, *, reported: int = 7,
            **spec_fields: Any) -> None:
    """A 20-iteration job (4 epochs of 5), 2 groups; rank 0 reported ``reported``."""
    spec = spec_proto(WARMUP_COSINE)
    for name, value in spec_fields.items():
        setattr(spec, name, value)
    stub.AttachJob(pb.AttachJobRequest(job_id=job_id, spec=spec, world_size=2))
    if reported:
        stub.ReportProgress(pb.ReportProgressRequest(job_id=job_id, generation=1, rank=0,
                                                     iteration=reported))


BASE = engine_values(WARMUP_COSINE)


# -- reading ---------------------------------------------------------------------------
def test_list_get_values_and_delete_return_typed_frozen_results(
        client: Client, stub: pb_grpc.SchedulerServiceStub):
    new_job(stub, "adm-a")
    new_job(stub, "adm-b", reported=0)
    jobs = client.list_jobs(prefix="adm-")
    assert [j.job_id for j in jobs] == ["adm-a", "adm-b"]
    job = client.get_job("adm-a")
    assert isinstance(job, JobInfo) and job == jobs[0]
    assert (job.generation, job.max_iters, job.epoch_length, job.max_epochs) == (1, 20, 5, 4)
    assert job.params == ("lr", "momentum") and job.num_groups == 2 and job.epoch_based
    assert job.furthest_iteration == 7 and job.issued_until == 15 and not job.finished
    assert [(p.rank, p.iteration) for p in job.progress] == [(0, 7)]
    assert job.param_scheduler == WARMUP_COSINE and job.initial_values[0]["lr"] == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.generation = 2  # type: ignore[misc]

    values = client.values("adm-a")
    assert isinstance(values, Values) and (values.start, values.stop) == (0, 21)
    assert [list(r) for r in values.rows] == BASE
    assert values.at(7) == tuple(BASE[7]) and values.series("lr", 1)[1][3] == BASE[3][1]["lr"]
    assert [list(r) for r in client.values("adm-a", 5, 9).rows] == BASE[5:9]
    assert client.get_values("adm-a", 2, 4) == BASE[2:4]

    assert client.delete_job("adm-b") is True
    assert client.delete_job("adm-b") is False
    with pytest.raises(JobNotFoundError):
        client.get_job("adm-b")
    assert [e.action for e in client.history("adm-b")] in ([], ["delete"])


def test_values_come_in_chunks(client: Client, stub: pb_grpc.SchedulerServiceStub,
                               monkeypatch: pytest.MonkeyPatch):
    from paramsched.client import admin

    new_job(stub, "adm-chunks")
    monkeypatch.setattr(admin, "VALUES_PER_CALL", 12)  # 3 iterations per call
    seen: list[int] = []
    values = client.values("adm-chunks", progress=seen.append)
    assert [list(r) for r in values.rows] == BASE
    assert seen[:3] == [3, 6, 9] and seen[-1] == 21


def test_preview_computes_a_config_without_creating_a_job(client: Client):
    values = client.preview(WARMUP_COSINE, GROUPS, epoch_length=5, max_epochs=4)
    assert [list(r) for r in values.rows] == BASE
    assert client.list_jobs(prefix="preview") == []
    with pytest.raises(InvalidArgumentError) as info:
        client.preview([{"type": "CosineAnealingLR"}], GROUPS, epoch_length=5, max_epochs=4)
    assert "did you mean 'CosineAnnealingLR'" in str(info.value)
    assert info.value.field_violations[0][0] == "spec.param_scheduler[0].type"  # type: ignore[attr-defined]


# -- changing --------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "args", "kwargs", "action"), [
    ("set", ("lr", 0.003), {}, "set"),
    ("scale", ("lr", 0.5), {}, "scale"),
    ("hold", ("lr",), {}, "hold"),
    ("decay", ("lr",), {"to": 0.0, "over": 4}, "decay"),
    ("rewarm", ("lr",), {"from_factor": 0.1, "over": 4}, "rewarm"),
    ("extend", (), {"max_iters": 40}, "extend"),
    ("reschedule", ([{"type": "ConstantLR", "factor": 0.5, "by_epoch": False}],),
     {"mode": "multiply"}, "reschedule"),
])
def test_every_change_has_a_dry_run_that_changes_nothing_then_applies(
        client: Client, stub: pb_grpc.SchedulerServiceStub, method: str, args: tuple[Any, ...],
        kwargs: dict[str, Any], action: str):
    job_id = f"adm-change-{method}"
    new_job(stub, job_id)
    dry = getattr(client, method)(job_id, *args, dry_run=True, reason="test", **kwargs)
    assert isinstance(dry, ChangeResult) and dry.dry_run and not dry.applied
    assert (dry.action, dry.from_iteration) == (action, 15)
    assert [list(r) for r in dry.before.rows][:6] == BASE[15:21]
    assert client.get_job(job_id).num_changes == 0 and client.history(job_id) == []

    done = getattr(client, method)(job_id, *args, reason="test", **kwargs)
    assert done.applied and done.job.num_changes == 1
    values = client.values(job_id)
    assert [list(r) for r in values.rows][:15] == BASE[:15]  # handed out: never changed
    assert [list(r) for r in values.rows][15:] == [list(r) for r in done.after.rows]
    (entry,) = client.history(job_id)
    assert isinstance(entry, AuditEntry)
    assert (entry.action, entry.iteration, entry.reason) == (action, 15, "test")


def test_decay_reaches_its_target_at_the_end_of_the_change(client: Client,
                                                           stub: pb_grpc.SchedulerServiceStub):
    new_job(stub, "adm-decay")
    result = client.decay("adm-decay", "lr", to=1e-4, over=4, groups=[0], dry_run=True)
    assert result.until == 19 and result.warnings == ()
    before, after = result.values_at(19)
    assert after[0]["lr"] == pytest.approx(1e-4) and before[0]["lr"] == BASE[19][0]["lr"]
    assert after[1] == before[1]  # group 1 untouched


def test_a_change_running_past_the_end_warns_that_it_never_reaches_its_target(
        client: Client, stub: pb_grpc.SchedulerServiceStub):
    new_job(stub, "adm-past")
    result = client.decay("adm-past", "lr", to=1e-5, over=2000, dry_run=True)
    (warning,) = result.warnings
    assert "runs to iteration 2015 but the job ends at iteration 20" in warning
    assert "never reaches its target (lr -> 1e-05)" in warning and result.until == 20


def test_a_finished_job_says_so_instead_of_naming_a_flag_never_given(
        client: Client, stub: pb_grpc.SchedulerServiceStub):
    new_job(stub, "adm-done", reported=0)
    for rank in (0, 1):
        stub.ReportProgress(pb.ReportProgressRequest(job_id="adm-done", generation=1,
                                                     rank=rank, iteration=20, plan_size=64))
    with pytest.raises(JobFinishedError, match="job 'adm-done' finished at iteration 20"):
        client.set("adm-done", "lr", 0.01)


def test_guardrails_from_attach_refuse_out_of_bounds_and_big_jumps(server: InProcessServer):
    optimizer = make_optimizer([dict(g) for g in GROUPS])
    client = Client(server.target, plan_size=4)  # leaves iterations a change can start at
    handle = client.attach(optimizer, "adm-guarded", WARMUP_COSINE, epoch_length=5,
                           max_epochs=4, world_size=1, rank=0,
                           bounds={"lr": (0.0, 0.2)}, max_jump_factor=3.0)
    try:
        job = client.get_job("adm-guarded")
        assert job.bounds == {"lr": (0.0, 0.2)} and job.max_jump_factor == 3.0
        with pytest.raises(InvalidArgumentError) as info:
            client.set("adm-guarded", "lr", 0.5, force=True)
        assert "lr" in str(info.value)
        with pytest.raises(InvalidArgumentError, match="force"):
            client.set("adm-guarded", "lr", 1e-6)
        assert client.set("adm-guarded", "lr", 1e-6, force=True).applied
    finally:
        handle.detach()
        client.close()


def test_a_spec_mismatch_suggests_deleting_the_job(client: Client,
                                                   stub: pb_grpc.SchedulerServiceStub):
    new_job(stub, "adm-mismatch", reported=0)
    changed = [dict(WARMUP_COSINE[0], start_factor=0.5), *WARMUP_COSINE[1:]]
    with pytest.raises(JobSpecMismatchError, match="paramsched jobs delete"):
        client.attach(make_optimizer([dict(g) for g in GROUPS]), "adm-mismatch", changed,
                      epoch_length=5, max_epochs=4, world_size=2, rank=1, run_id="run-1")


def test_signatures_mirror_the_cli():
    common = ["groups", "from_iteration", "reason", "force", "dry_run"]
    expected = {
        "set": ["job_id", "param", "value", *common],
        "scale": ["job_id", "param", "factor", *common],
        "hold": ["job_id", "param", *common],
        "decay": ["job_id", "param", "to", "over", "shape", *common],
        "rewarm": ["job_id", "param", "from_factor", "over", *common],
        "extend": ["job_id", "max_iters", *common],
        "reschedule": ["job_id", "param_scheduler", "mode", "params", "start_values",
                       "max_iters", *common],
    }
    for name, params in expected.items():
        signature = inspect.signature(getattr(Client, name))
        assert list(signature.parameters)[1:] == params, name
        assert signature.parameters["dry_run"].default is False


# -- waiting for a server --------------------------------------------------------------
def test_admin_calls_to_a_server_that_is_not_there_fail_at_once_with_a_hint():
    with Client("127.0.0.1:1", wait_timeout=30.0) as client, pytest.raises(
            ScheduleUnavailableError) as info:
        client.list_jobs()
    text = str(info.value)
    assert "127.0.0.1:1" in text and "paramsched serve" in text and "PARAMSCHED_TARGET" in text


def test_attach_to_a_server_not_there_yet_says_it_waits_then_warns(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_rpc, "WARN_AFTER", 0.3)
    monkeypatch.setattr(_rpc, "WARN_EVERY", 0.3)
    optimizer = make_optimizer([dict(g) for g in GROUPS])
    with caplog.at_level(logging.WARNING, logger="paramsched.client"), \
            Client("127.0.0.1:1", wait_timeout=1.5, backoff_max=0.1) as client, \
            pytest.raises(ScheduleUnavailableError, match="paramsched serve"):
        client.attach(optimizer, "adm-wait", WARMUP_COSINE, epoch_length=5, max_epochs=4,
                      world_size=1, rank=0)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "connection refused" in messages[0] and "waiting" in messages[0]
    assert "attaching to job 'adm-wait'" in messages[0] and "127.0.0.1:1" in messages[0]
    assert any("still waiting" in m for m in messages[1:]), messages


def test_a_background_report_failing_for_a_while_logs_a_warning_with_the_iteration(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_rpc, "WARN_AFTER", 0.2)
    server = InProcessServer(data_dir=tmp_path, plan_size=64).start()
    target = server.target
    optimizer = make_optimizer([dict(g) for g in GROUPS])
    client = Client(server.target, report_interval=0.05, backoff_max=0.1, wait_timeout=5)
    handle = client.attach(optimizer, "adm-down", WARMUP_COSINE, epoch_length=5,
                           max_epochs=4, world_size=1, rank=0)
    try:
        for _ in range(3):
            optimizer.step()
        server.stop()
        with caplog.at_level(logging.WARNING, logger="paramsched.client"):
            import time

            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not caplog.records:
                optimizer.step() if handle.iteration < 10 else None
                time.sleep(0.05)
        messages = [r.getMessage() for r in caplog.records]
        assert messages, "no WARNING while the server was down"
        assert "job 'adm-down'" in messages[0] and "iteration" in messages[0]
        assert target in messages[0]
    finally:
        handle._fatal = None
        handle.detach()
        client.close()


def test_a_wait_for_a_decision_is_logged_as_such(caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_rpc, "WARN_AFTER", 0.0)
    waiting = _rpc.Waiting("h:1", lambda: "job 'j' (rank 1): values of iteration 10", 60.0)
    with caplog.at_level(logging.WARNING, logger="paramsched.client"):
        waiting.failed(None, waits_for="the validation decision of epoch 1")
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("job 'j' (rank 1): values of iteration 10: still waiting after ")
    assert "the validation decision of epoch 1 (server h:1) (for up to 60s)" in message
    assert waiting.warned
