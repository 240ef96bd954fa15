"""Validation points through the real gRPC server: ``attach(..., val_interval=K)``,
``handle.record_validation(metrics)``, plans that stop at a pending decision, the wire
``validation_at`` field, and checkpoints that carry the decisions (also into an empty
server)."""

from __future__ import annotations

import grpc
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mmengine")

from test_engine_val_interval import mmengine_iter_curves, points  # noqa: E402

from paramsched import Client  # noqa: E402
from paramsched.api.v1 import scheduler_pb2  # noqa: E402
from paramsched.client import DecisionRequiredError, EpochError  # noqa: E402
from paramsched.client.jobspec import job_spec  # noqa: E402

from grpc_harness import serving  # noqa: E402

GROUPS = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
          {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.0}]
SCHEDULE = [
    {"type": "LinearLR", "start_factor": 0.25, "by_epoch": False, "end": 5},
    {"type": "ReduceOnPlateauLR", "monitor": "loss", "patience": 0, "factor": 0.5},
    {"type": "ReduceOnPlateauMomentum", "monitor": "loss", "patience": 1, "factor": 0.9},
]
MAX_ITERS, VAL = 14, 4  # validation after 4, 8, 12 and 14 iterations
LOSSES = {0: {"loss": 1.0}, 1: {"loss": 1.2}, 2: None, 3: {"loss": 0.4}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(data_dir=tmp_path_factory.mktemp("store")) as (srv, stub):
        yield srv, stub


def optimizer() -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], **g} for g in GROUPS]
    return torch.optim.SGD(groups, lr=0.1)


def expected() -> list[list[dict[str, float]]]:
    curves = mmengine_iter_curves(SCHEDULE, GROUPS, 1, MAX_ITERS, VAL, LOSSES)
    assert curves is not None
    return curves


def train(handle, opt, until: int, seen: list) -> None:
    """Optimizer steps up to ``until`` iterations done, validating at every point."""
    while handle.iteration < until:
        seen.append([{k: g[k] for k in ("lr", "momentum")} for g in opt.param_groups])
        opt.step()
        n = handle.iteration
        if n in points(MAX_ITERS, VAL):
            handle.record_validation(LOSSES[points(MAX_ITERS, VAL).index(n)])


def test_values_equal_mmengine_with_validation_every_val_interval(server):
    srv, _ = server
    opt = optimizer()
    with Client(srv.target, wait_timeout=10) as client:
        handle = client.attach(opt, "val-parity", SCHEDULE, max_iters=MAX_ITERS,
                               val_interval=VAL)
        seen: list = []
        train(handle, opt, MAX_ITERS, seen)
    want = [[{k: g[k] for k in ("lr", "momentum")} for g in row] for row in expected()]
    assert seen == want[:MAX_ITERS]
    assert len({row[0]["lr"] for row in seen}) > 3  # the plateau cut (not a flat curve)


def test_a_missing_validation_blocks_the_next_step_and_says_what_to_call(server):
    srv, _ = server
    opt = optimizer()
    with Client(srv.target, wait_timeout=2) as client:
        client.attach(opt, "val-missing", SCHEDULE, max_iters=MAX_ITERS, val_interval=VAL)
        for _ in range(VAL):
            opt.step()
        with pytest.raises(DecisionRequiredError, match="record_validation"):
            opt.step()


def test_record_validation_only_at_validation_points(server):
    srv, _ = server
    opt = optimizer()
    with Client(srv.target, wait_timeout=5) as client:
        handle = client.attach(opt, "val-points", SCHEDULE, max_iters=MAX_ITERS,
                               val_interval=VAL)
        opt.step()
        with pytest.raises(EpochError, match="every 4 iterations") as info:
            handle.record_validation({"loss": 1.0})
        assert isinstance(info.value, ValueError)
        with pytest.raises(EpochError, match="record_validation"):
            handle.end_epoch({"loss": 1.0})
        for _ in range(VAL - 1):
            opt.step()
        handle.record_validation({"loss": 1.0})
        with pytest.raises(EpochError, match="already recorded"):
            handle.record_validation({"loss": 1.0})


def test_attach_refuses_val_interval_where_it_means_nothing(server):
    srv, _ = server
    with Client(srv.target) as client:
        with pytest.raises(ValueError, match="iteration-based"):
            client.attach(optimizer(), "val-epochs", SCHEDULE, epoch_length=2, max_epochs=3,
                          val_interval=2)
        with pytest.raises(ValueError, match="val_interval must be an integer >= 1"):
            client.attach(optimizer(), "val-zero", SCHEDULE, max_iters=4, val_interval=0)
        with pytest.raises(EpochError, match="val_interval="):
            handle = client.attach(optimizer(), "val-none", SCHEDULE, max_iters=4)
            handle.optimizer.step()
            handle.record_validation(None)


def test_the_wire_names_the_validation_point_and_refuses_others(server):
    _srv, stub = server
    spec = job_spec(SCHEDULE, GROUPS, max_iters=MAX_ITERS, val_interval=VAL)
    assert spec.val_interval == VAL
    job = stub.AttachJob(scheduler_pb2.AttachJobRequest(job_id="val-wire", spec=spec)).job
    assert job.spec.val_interval == VAL

    def report(**kw):
        return stub.ReportProgress(scheduler_pb2.ReportProgressRequest(
            job_id="val-wire", generation=job.generation, incarnation=job.incarnation, **kw))

    plan = report(iteration=0).plan
    assert plan.num_iterations == VAL and plan.waits_for_epoch == 0
    for kw, field in [(dict(iteration=3, validation_at=3), "validation_at"),
                      (dict(iteration=4, validation_at=8), "validation_at"),
                      (dict(iteration=4, validation_at=4, epoch_end=0), "validation_at"),
                      (dict(iteration=4, epoch_end=0), "epoch_end"),
                      (dict(iteration=4, has_metrics=True, metrics={"loss": 1.0}),
                       "has_metrics")]:
        with pytest.raises(grpc.RpcError) as info:
            report(**kw)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in info.value.details(), (kw, info.value.details())
    plan = report(iteration=4, validation_at=4, has_metrics=True, metrics={"loss": 1.0}).plan
    assert plan.start_iteration == 4 and plan.num_iterations == VAL
    assert plan.waits_for_epoch == 1
    plan = report(iteration=8, validation_at=8, has_metrics=False).plan
    assert plan.num_iterations == VAL and plan.waits_for_epoch == 2
    plan = report(iteration=12, validation_at=12, has_metrics=False).plan
    assert plan.num_iterations == 2 and plan.waits_for_epoch == 3  # the last point: 14


def test_a_checkpoint_at_a_point_resumes_into_an_empty_server(tmp_path):
    """Saved before the point's validation (as MMEngine's CheckpointHook does), loaded
    into a server that never saw the job: the owed decision is made after the resume
    and the values from there equal the uninterrupted run's."""
    want = [[{k: g[k] for k in ("lr", "momentum")} for g in row] for row in expected()]
    at = 2 * VAL
    with serving(data_dir=tmp_path / "a") as (srv, _):
        opt = optimizer()
        with Client(srv.target, wait_timeout=10) as client:
            handle = client.attach(opt, "val-resume", SCHEDULE, max_iters=MAX_ITERS,
                                   val_interval=VAL)
            seen: list = []
            train(handle, opt, at - 1, seen)
            seen.append([{k: g[k] for k in ("lr", "momentum")} for g in opt.param_groups])
            opt.step()  # iteration `at` done: its validation is owed
            state = handle.state_dict()
    assert seen == want[:at]
    with serving(data_dir=tmp_path / "b") as (srv, _):
        opt = optimizer()
        with Client(srv.target, wait_timeout=10) as client:
            handle = client.attach(opt, "val-resume", SCHEDULE, max_iters=MAX_ITERS,
                                   val_interval=VAL)
            handle.load_state_dict(state)
            assert handle.iteration == at
            handle.record_validation(LOSSES[at // VAL - 1])
            rest: list = []
            train(handle, opt, MAX_ITERS, rest)
    assert rest == want[at:MAX_ITERS]
