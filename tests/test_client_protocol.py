"""The client against an in-process server that speaks the protocol (``FakeScheduler``,
built on the real schedule engine): timing of values, plans and refills, epoch ends and
ReduceOnPlateau decisions, checkpoints, fencing, faults. The fake records every request,
so these tests also pin down what the training thread does *not* do (wait on the network).
"""

from __future__ import annotations

import copy
import io
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from paramsched import Client
from paramsched.client import (
    AttachError,
    DecisionRequiredError,
    EpochError,
    InvalidArgumentError,
    JobNotFoundError,
    JobSpecMismatchError,
    ParamschedError,
    ScheduleHandle,
    ScheduleUnavailableError,
    StaleGenerationError,
)

from optimizers import make_optimizer, snapshot
from oracle_mmengine import first_mismatch, mmengine_curves
from server_harness import FakeScheduler, fake_server
from strategies import Case, cases

SGD_GROUPS = [
    {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.0},
]
ADAM_GROUPS = [
    {"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0},
    {"lr": 3e-4, "betas": [0.85, 0.99], "weight_decay": 0.01},
]
WARMUP_COSINE = [
    {"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "begin": 0, "end": 7},
    {"type": "CosineAnnealingLR", "by_epoch": True, "T_max": 4, "convert_to_iter_based": True},
    {"type": "CosineAnnealingMomentum", "by_epoch": False, "eta_min": 0.5, "T_max": 12},
    {"type": "StepParamScheduler", "param_name": "weight_decay", "step_size": 2, "gamma": 0.5},
]
#: randomised parity examples (raise with PARAMSCHED_CLIENT_EXAMPLES=N for a longer search)
RANDOM_EXAMPLES = int(os.environ.get("PARAMSCHED_CLIENT_EXAMPLES", "100"))

PLATEAU = [
    {"type": "LinearLR", "start_factor": 0.5, "by_epoch": False, "end": 3},
    {"type": "ReduceOnPlateauLR", "monitor": "loss", "patience": 0, "factor": 0.5},
]


@pytest.fixture
def server() -> Iterator[tuple[FakeScheduler, str]]:
    with fake_server() as served:
        yield served


@pytest.fixture
def client(server: tuple[FakeScheduler, str]) -> Iterator[Client]:
    with Client(server[1], wait_timeout=5.0, report_interval=0.05, timeout=2.0) as c:
        yield c


def _job() -> str:
    return f"job-{uuid.uuid4().hex[:8]}"






def run(
    handle: ScheduleHandle,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    total: int,
    epoch_length: int | None = None,
    metrics: Mapping[int, Mapping[str, float] | None] | None = None,
    start: int = 0,
    stop: int | None = None,
    pause: float = 0.0,
) -> list[list[dict[str, float]]]:
    """Train iterations ``start..stop-1`` (recording values before every step), ending
    epochs with ``metrics``; the last record is the state after ``stop - 1``."""
    stop = total if stop is None else stop
    recorded = []
    for t in range(start, stop):
        recorded.append(snapshot(optimizer, names))
        optimizer.step()
        if epoch_length and (t + 1) % epoch_length == 0:
            handle.end_epoch((metrics or {}).get((t + 1) // epoch_length - 1))
        if pause:
            time.sleep(pause)
    recorded.append(snapshot(optimizer, names))
    return recorded


def expect(
    cfg: Any,
    groups: list[dict[str, Any]],
    epoch_length: int,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    metrics: Mapping[int, Mapping[str, float] | None] | None = None,
) -> tuple[list[list[dict[str, float]]], list[str]]:
    oracle = mmengine_curves(cfg, groups, epoch_length, max_epochs, max_iters, metrics)
    assert oracle.ok, oracle.error
    return oracle.curves, oracle.param_names


# --------------------------------------------------------------------------- values


def test_attach_puts_iteration_0_values_in_the_optimizer(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    with client.attach(opt, _job(), WARMUP_COSINE, epoch_length=3, max_epochs=4) as handle:
        curves, names = expect(WARMUP_COSINE, SGD_GROUPS, 3, max_epochs=4)
        assert first_mismatch(curves[:1], [snapshot(opt, names)], names) is None
        assert handle.iteration == 0 and handle.generation >= 1
        assert handle.values == curves[0]
        assert handle.params == ("lr", "momentum", "weight_decay")


@pytest.mark.parametrize("groups", [SGD_GROUPS, ADAM_GROUPS], ids=["sgd", "adam"])
def test_values_before_every_step_equal_mmengine(client: Client, groups: Any) -> None:
    metrics = {e: {"loss": 1.0 / (e + 1)} for e in range(4)}
    curves, names = expect(WARMUP_COSINE, groups, 3, max_epochs=4, metrics=metrics)
    opt = make_optimizer(groups)
    with client.attach(opt, _job(), WARMUP_COSINE, epoch_length=3, max_epochs=4) as handle:
        got = run(handle, opt, names, 12, 3, metrics)
    assert first_mismatch(curves, got, names) is None


def test_adam_momentum_lands_in_betas0_and_in_the_momentum_key(client: Client) -> None:
    opt = make_optimizer(ADAM_GROUPS)
    cfg = [{"type": "LinearMomentum", "start_factor": 0.5, "by_epoch": False, "end": 4}]
    with client.attach(opt, _job(), cfg, max_iters=6):
        for group in opt.param_groups:
            assert group["momentum"] == group["betas"][0]
        opt.step()
        assert opt.param_groups[1]["betas"][1] == 0.99


@settings(
    max_examples=RANDOM_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases(), plan_size=st.sampled_from([1, 3, 8, 256]))
def test_randomised_configs_match_mmengine_through_the_client(
    server: tuple[FakeScheduler, str], case: Case, plan_size: int
) -> None:
    note(case.describe())
    oracle = mmengine_curves(
        case.param_scheduler,
        case.initial_values,
        case.epoch_length,
        case.max_epochs,
        case.max_iters,
        case.metrics,
    )
    assume(oracle.ok)
    opt = make_optimizer(case.initial_values)
    with Client(server[1], plan_size=plan_size, wait_timeout=5, report_interval=0.01) as client:
        try:
            handle = client.attach(
                opt,
                _job(),
                copy.deepcopy(case.param_scheduler),
                epoch_length=case.epoch_length,
                **case.loop_kwargs(),
            )
        except InvalidArgumentError:
            from paramsched.server.schedules import ConfigError, build_job_spec

            with pytest.raises(ConfigError):  # the engine rejects it too: not the client's doing
                build_job_spec(
                    case.param_scheduler,
                    case.initial_values,
                    epoch_length=case.epoch_length,
                    **case.loop_kwargs(),
                )
            assume(False)
            raise
        with handle:
            epoch_length = case.epoch_length if case.max_epochs is not None else None
            got = run(handle, opt, oracle.param_names, case.total_iters, epoch_length, case.metrics)
    problem = first_mismatch(oracle.curves, got, oracle.param_names)
    assert problem is None, problem


def test_tensor_lr_is_filled_in_place_through_the_whole_run(client: Client) -> None:
    lr = torch.tensor(0.01)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr, foreach=False)
    cfg = [{"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "end": 5}]
    curves, _ = expect(cfg, [{"lr": 0.01, "betas": [0.9, 0.999]}], 1, max_iters=6)
    with client.attach(opt, _job(), cfg, max_iters=6) as handle:
        for t in range(6):
            assert opt.param_groups[0]["lr"] is lr
            assert lr.item() == pytest.approx(curves[t][0]["lr"], rel=1e-6)
            opt.step()
        assert handle.iteration == 6


# --------------------------------------------------------------------------- plans


def test_the_training_thread_never_waits_while_refills_keep_up(server: Any) -> None:
    fake, address = server
    cfg = [{"type": "CosineAnnealingLR", "by_epoch": False, "T_max": 160}]
    curves, names = expect(cfg, SGD_GROUPS, 1, max_iters=160)
    opt = make_optimizer(SGD_GROUPS)
    with Client(address, plan_size=64, prefetch_seconds=0.0, report_interval=30.0) as client:
        handle = client.attach(opt, _job(), cfg, max_iters=160)
        blocking: list[int] = []
        original = handle._wait_for

        def counting(t: int, *, until_decision: bool = False) -> bool:
            blocking.append(t)
            return original(t, until_decision=until_decision)

        setattr(handle, "_wait_for", counting)  # noqa: B010
        got = run(handle, opt, names, 160, pause=0.004)  # a refill has 32 steps = 128 ms
        handle.detach()
    assert first_mismatch(curves, got, names) is None
    assert blocking == []
    reports = fake.calls("ReportProgress")
    assert 160 // 64 <= len(reports) < 10  # refills only: no report per iteration


def test_a_plan_that_runs_out_is_fetched_before_the_step_runs(server: Any) -> None:
    _, address = server
    cfg = [{"type": "ExponentialLR", "gamma": 0.9, "by_epoch": False}]
    curves, names = expect(cfg, SGD_GROUPS, 1, max_iters=20)
    opt = make_optimizer(SGD_GROUPS)
    with Client(address, plan_size=1, report_interval=30.0) as client:
        handle = client.attach(opt, _job(), cfg, max_iters=20)
        got = run(handle, opt, names, 20)
        handle.detach()
    assert first_mismatch(curves, got, names) is None


# --------------------------------------------------------------------------- jobs


def test_joining_without_a_config_gets_the_same_values(client: Client) -> None:
    job = _job()
    first, second = make_optimizer(SGD_GROUPS), make_optimizer(SGD_GROUPS)
    with client.attach(
        first, job, WARMUP_COSINE, epoch_length=3, max_epochs=4, rank=0, world_size=2,
        run_id="two-ranks",
    ):
        for group in second.param_groups:
            group["lr"] = 123.0
        with client.attach(second, job, rank=1, world_size=2, run_id="two-ranks") as joined:
            assert snapshot(second, list(joined.params)) == snapshot(first, list(joined.params))


def test_joining_an_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(JobNotFoundError, match="no-such-job"):
        client.attach(make_optimizer(SGD_GROUPS), "no-such-job")


def test_a_different_config_for_an_existing_job_is_refused(client: Client) -> None:
    job = _job()
    opt = make_optimizer(SGD_GROUPS)
    with (
        client.attach(opt, job, PLATEAU, epoch_length=3, max_epochs=2),
        pytest.raises(JobSpecMismatchError),
    ):
        client.attach(make_optimizer(SGD_GROUPS), job, WARMUP_COSINE, epoch_length=3, max_epochs=2)


def test_same_config_again_is_a_no_op_join(client: Client) -> None:
    job = _job()
    first, second = make_optimizer(SGD_GROUPS), make_optimizer(SGD_GROUPS)
    with client.attach(first, job, PLATEAU, epoch_length=3, max_epochs=2) as a:
        b = client.attach(second, job, PLATEAU, epoch_length=3, max_epochs=2)
        assert a.generation == b.generation
        b.detach()


def test_param_group_count_mismatch_with_the_job_is_a_clear_error(client: Client) -> None:
    job = _job()
    opt = make_optimizer(SGD_GROUPS)
    with (
        client.attach(opt, job, PLATEAU, epoch_length=3, max_epochs=2),
        pytest.raises(AttachError, match=r"2 param group.*optimizer has 1"),
    ):
        client.attach(make_optimizer(SGD_GROUPS[:1]), job)


def test_an_invalid_config_names_the_field(client: Client) -> None:
    cfg = [{"type": "LinearLR", "start_factor": 2.0, "by_epoch": False}]
    with pytest.raises(InvalidArgumentError, match="start_factor"):
        client.attach(make_optimizer(SGD_GROUPS), _job(), cfg, max_iters=5)


def test_an_optimizer_cannot_be_attached_twice(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    with (
        client.attach(opt, _job(), PLATEAU, epoch_length=3, max_epochs=2),
        pytest.raises(ParamschedError, match="already attached"),
    ):
        client.attach(opt, _job(), PLATEAU, epoch_length=3, max_epochs=2)
    client.attach(opt, _job(), PLATEAU, epoch_length=3, max_epochs=2).detach()


def test_detach_removes_the_hooks(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    cfg = [{"type": "ExponentialLR", "gamma": 0.5, "by_epoch": False}]
    handle = client.attach(opt, _job(), cfg, max_iters=10)
    opt.step()
    handle.detach()
    before = snapshot(opt, ["lr"])
    opt.step()
    opt.step()
    assert snapshot(opt, ["lr"]) == before and handle.iteration == 1
    with pytest.raises(ParamschedError, match="detached"):
        handle.end_epoch()


def test_stepping_past_the_end_holds_the_last_values_with_a_warning(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    cfg = [{"type": "ExponentialLR", "gamma": 0.5, "by_epoch": False}]
    with client.attach(opt, _job(), cfg, max_iters=3):
        for _ in range(3):
            opt.step()
        last = snapshot(opt, ["lr"])
        opt.step()
        with pytest.warns(RuntimeWarning, match="has 3 iterations"):
            opt.step()
        assert snapshot(opt, ["lr"]) == last


# --------------------------------------------------------------------------- epochs


def test_plateau_decision_is_applied_when_end_epoch_returns(client: Client) -> None:
    metrics = {0: {"loss": 1.0}, 1: {"loss": 2.0}, 2: {"loss": 3.0}}
    curves, names = expect(PLATEAU, SGD_GROUPS, 4, max_epochs=3, metrics=metrics)
    opt = make_optimizer(SGD_GROUPS)
    with client.attach(opt, _job(), PLATEAU, epoch_length=4, max_epochs=3) as handle:
        for _ in range(4):
            opt.step()
        assert handle._applied != 4  # the values after epoch 0 wait for its metrics
        handle.end_epoch(metrics[0])
        assert snapshot(opt, names) == curves[4]
        got = run(handle, opt, names, 12, 4, metrics, start=4)
    assert first_mismatch(curves[4:], got, names) is None


def test_a_single_rank_that_skips_end_epoch_fails_fast(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    with client.attach(opt, _job(), PLATEAU, epoch_length=2, max_epochs=3):
        opt.step()
        opt.step()
        start = time.monotonic()
        with pytest.raises(DecisionRequiredError, match=r"epoch 0.*end_epoch"):
            opt.step()
        assert time.monotonic() - start < 1.0


def test_a_rank_waits_for_another_ranks_decision(server: Any) -> None:
    _, address = server
    job = _job()
    metrics = {0: {"loss": 1.0}, 1: {"loss": 0.5}}
    curves, names = expect(PLATEAU, SGD_GROUPS, 3, max_epochs=2, metrics=metrics)
    with Client(address, wait_timeout=10, report_interval=0.05) as client:
        opt0, opt1 = make_optimizer(SGD_GROUPS), make_optimizer(SGD_GROUPS)
        h0 = client.attach(opt0, job, PLATEAU, epoch_length=3, max_epochs=2, rank=0, world_size=2,
                           run_id="two-ranks")
        h1 = client.attach(opt1, job, rank=1, world_size=2, run_id="two-ranks")

        def rank0() -> None:
            time.sleep(0.3)
            for _ in range(3):
                opt0.step()
            h0.end_epoch(metrics[0])

        other = threading.Thread(target=rank0)
        other.start()
        got = []
        for _ in range(6):  # rank 1 never reports metrics
            got.append(snapshot(opt1, names))
            opt1.step()
        got.append(snapshot(opt1, names))
        other.join()
        h1.detach()
        h0.detach()
    assert first_mismatch(curves, got, names) is None


def test_end_epoch_must_be_called_at_an_epoch_boundary(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    with client.attach(opt, _job(), PLATEAU, epoch_length=3, max_epochs=2) as handle:
        with pytest.raises(EpochError, match="after 0 iteration"):
            handle.end_epoch()
        opt.step()
        with pytest.raises(EpochError, match=r"epochs end every 3 iterations.*after iteration 3"):
            handle.end_epoch()
        opt.step()
        opt.step()
        handle.end_epoch(None)
        with pytest.raises(EpochError, match=r"epoch 0 .*already ended"):
            handle.end_epoch(None)


def test_iteration_based_jobs_have_no_epochs(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    cfg = [{"type": "ExponentialLR", "gamma": 0.5, "by_epoch": False}]
    with (
        client.attach(opt, _job(), cfg, max_iters=4) as handle,
        pytest.raises(EpochError, match="iteration-based"),
    ):
        handle.end_epoch()


def test_metrics_without_the_monitored_key_are_rejected_and_can_be_resent(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    with client.attach(opt, _job(), PLATEAU, epoch_length=2, max_epochs=2) as handle:
        opt.step()
        opt.step()
        with pytest.raises(InvalidArgumentError, match="loss"):
            handle.end_epoch({"acc": 0.5})
        handle.end_epoch({"loss": 0.5})
        opt.step()


# --------------------------------------------------------------------------- checkpoints


def test_resume_into_an_empty_server_continues_the_same_curve(tmp_path: Any) -> None:
    metrics = {e: {"loss": [1.0, 0.9, 0.95, 0.97, 0.5, 0.6][e]} for e in range(6)}
    cfg = [*WARMUP_COSINE[:2], PLATEAU[1]]
    curves, names = expect(cfg, SGD_GROUPS, 4, max_epochs=6, metrics=metrics)
    job = _job()
    with fake_server() as (_, address), Client(address) as client:
        opt = make_optimizer(SGD_GROUPS)
        handle = client.attach(opt, job, cfg, epoch_length=4, max_epochs=6)
        first = run(handle, opt, names, 24, 4, metrics, stop=12)
        torch.save({"scheduler": handle.state_dict()}, tmp_path / "ckpt.pt")
        handle.detach()
    assert first_mismatch(curves[:13], first, names) is None

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    with fake_server() as (fresh, address), Client(address) as client:
        opt = make_optimizer(SGD_GROUPS)
        handle = client.attach(opt, job, cfg, epoch_length=4, max_epochs=6)
        generation = handle.generation
        handle.load_state_dict(ckpt["scheduler"])
        assert handle.iteration == 12 and handle.generation > generation
        assert fresh.calls("LoadState")
        second = run(handle, opt, names, 24, 4, metrics, start=12)
        handle.detach()
    assert first_mismatch(curves[12:], second, names, start=12) is None


def test_state_dict_is_plain_data(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    with client.attach(opt, _job(), PLATEAU, epoch_length=2, max_epochs=2) as handle:
        opt.step()
        state = handle.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == state
    assert state["iteration"] == 1 and isinstance(state["state_json"], str)


def test_epoch_ends_nobody_waits_on_send_nothing(server: Any) -> None:
    fake, address = server
    cfg = [{"type": "StepLR", "step_size": 1, "gamma": 0.5}]
    with Client(address, report_interval=30.0) as client:
        opt = make_optimizer(SGD_GROUPS)
        handle = client.attach(opt, _job(), cfg, epoch_length=2, max_epochs=3)
        for _ in range(2):
            opt.step()
        before = len(fake.requests)
        handle.end_epoch({"loss": 1.0})
        assert len(fake.requests) == before
        handle.detach()
    assert not any(r.HasField("epoch_end") for r in fake.calls("ReportProgress"))


def test_decisions_are_in_the_checkpoint(client: Client) -> None:
    opt = make_optimizer(SGD_GROUPS)
    with client.attach(opt, _job(), PLATEAU, epoch_length=2, max_epochs=3) as handle:
        for _ in range(2):
            opt.step()
        handle.end_epoch({"loss": 1.0})
        state = handle.state_dict()
    assert '"0": {"loss": 1.0}' in state["state_json"]


def test_detach_reports_where_the_rank_stopped(server: Any) -> None:
    fake, address = server
    cfg = [{"type": "ExponentialLR", "gamma": 0.5, "by_epoch": False}]
    with Client(address, report_interval=30.0) as client:
        opt = make_optimizer(SGD_GROUPS)
        with client.attach(opt, _job(), cfg, max_iters=10, rank=1, world_size=2,
                           run_id="two-ranks"):
            for _ in range(3):
                opt.step()
    last = fake.calls("ReportProgress")[-1]
    assert (last.rank, last.iteration) == (1, 3)


def test_a_rank_of_an_older_generation_is_stopped(server: Any) -> None:
    _, address = server
    job = _job()
    cfg = [{"type": "ExponentialLR", "gamma": 0.9, "by_epoch": False}]
    with Client(address, report_interval=0.02) as client:
        old_opt, new_opt = make_optimizer(SGD_GROUPS), make_optimizer(SGD_GROUPS)
        old = client.attach(old_opt, job, cfg, max_iters=1000, rank=0, world_size=1)
        new = client.attach(new_opt, job, rank=0, world_size=1)
        new.load_state_dict(new.state_dict())  # a resume elsewhere: generation bumped
        deadline = time.monotonic() + 5
        with pytest.raises(StaleGenerationError, match="resumed from a checkpoint"):
            while time.monotonic() < deadline:
                old_opt.step()
                time.sleep(0.005)
        new_opt.step()
        new.detach()
        old.detach()


# --------------------------------------------------------------------------- faults


def test_attach_retries_while_the_server_is_unavailable(server: Any) -> None:
    fake, address = server
    fake.fail_next = [grpc.StatusCode.UNAVAILABLE] * 3
    with Client(address, backoff_initial=0.01) as client:
        client.attach(
            make_optimizer(SGD_GROUPS), _job(), PLATEAU, epoch_length=2, max_epochs=2
        ).detach()
    assert len(fake.calls("AttachJob")) == 4


def test_the_loop_runs_on_its_plan_while_the_server_is_down(server: Any) -> None:
    fake, address = server
    cfg = [{"type": "CosineAnnealingLR", "by_epoch": False, "T_max": 50}]
    curves, names = expect(cfg, SGD_GROUPS, 1, max_iters=50)
    with Client(address, plan_size=100, report_interval=0.01, backoff_initial=0.01) as client:
        opt = make_optimizer(SGD_GROUPS)
        handle = client.attach(opt, _job(), cfg, max_iters=50)
        fake.down = True
        got = run(handle, opt, names, 50, pause=0.001)
        fake.down = False
        handle.detach()
    assert first_mismatch(curves, got, names) is None


def test_no_value_is_guessed_when_the_plan_runs_out_and_the_server_stays_down(
    server: Any,
) -> None:
    fake, address = server
    job = _job()
    cfg = [{"type": "ExponentialLR", "gamma": 0.5, "by_epoch": False}]
    with Client(address, plan_size=4, wait_timeout=0.6, backoff_initial=0.01) as client:
        opt = make_optimizer(SGD_GROUPS)
        handle = client.attach(opt, job, cfg, max_iters=20)
        fake.down = True
        for _ in range(3):
            opt.step()  # iterations 0..3 are in the plan
        with pytest.raises(ScheduleUnavailableError) as info:
            opt.step()  # iteration 3 runs; the values of iteration 4 never come
        message = str(info.value)
        assert address in message and job in message and "iteration 4" in message
        assert "waiting 0." in message and "UNAVAILABLE" in message
        held = snapshot(opt, ["lr"])
        weights = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
        with pytest.raises(ScheduleUnavailableError, match="iteration 4"):
            opt.step()  # the guard: iteration 4 does not run without its values
        assert snapshot(opt, ["lr"]) == held  # nothing guessed
        after = [p.detach() for g in opt.param_groups for p in g["params"]]
        assert all(torch.equal(a, b) for a, b in zip(weights, after, strict=True))
        fake.down = False
        opt.step()  # the server is back: training continues where it stopped
        assert handle.iteration == 5
        handle.detach()


def test_training_resumes_by_itself_when_the_server_comes_back(server: Any) -> None:
    fake, address = server
    cfg = [{"type": "ExponentialLR", "gamma": 0.9, "by_epoch": False}]
    curves, names = expect(cfg, SGD_GROUPS, 1, max_iters=12)
    with Client(address, plan_size=3, wait_timeout=10, backoff_initial=0.01) as client:
        opt = make_optimizer(SGD_GROUPS)
        handle = client.attach(opt, _job(), cfg, max_iters=12)
        fake.down = True
        threading.Timer(0.4, lambda: setattr(fake, "down", False)).start()
        got = run(handle, opt, names, 12)
        handle.detach()
    assert first_mismatch(curves, got, names) is None


def test_a_checkpoint_taken_before_end_epoch_resumes_waiting_for_that_decision(
    client: Client,
) -> None:
    metrics = {0: {"loss": 1.0}, 1: {"loss": 2.0}}
    curves, names = expect(PLATEAU, SGD_GROUPS, 3, max_epochs=2, metrics=metrics)
    job = _job()
    opt = make_optimizer(SGD_GROUPS)
    with client.attach(opt, job, PLATEAU, epoch_length=3, max_epochs=2) as handle:
        for _ in range(3):
            opt.step()
        state = handle.state_dict()  # at the end of epoch 0, its decision not made yet
    resumed_opt = make_optimizer(SGD_GROUPS)
    with client.attach(resumed_opt, job) as resumed:
        resumed.load_state_dict(state)
        assert resumed.iteration == 3
        resumed.end_epoch(metrics[0])
        got = run(resumed, resumed_opt, names, 6, 3, metrics, start=3)
    assert first_mismatch(curves[3:], got, names, start=3) is None
