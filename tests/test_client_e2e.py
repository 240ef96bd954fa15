"""End to end: the client against real ``paramsched serve`` processes.

Parity with MMEngine through the real server, 4 DDP ranks as real processes (one server,
and two servers on one Redis), resume into a fresh server with an empty store, and a
server killed with SIGKILL mid-run and restarted on its data dir.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from paramsched import Client
from paramsched.client import InvalidArgumentError, ScheduleHandle

from optimizers import make_optimizer, snapshot
from oracle_mmengine import first_mismatch, mmengine_curves
from process_harness import ServerProcess
from strategies import Case, cases

ROOT = Path(__file__).resolve().parent.parent
SGD_GROUPS = [
    {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.0},
]
ADAM_GROUPS = [
    {"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0},
    {"lr": 3e-4, "betas": [0.85, 0.99], "weight_decay": 0.01},
]
SCHEDULE: list[dict[str, Any]] = [
    {"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "begin": 0, "end": 7},
    {"type": "CosineAnnealingLR", "by_epoch": True, "T_max": 6, "convert_to_iter_based": True},
    {"type": "CosineAnnealingMomentum", "by_epoch": False, "eta_min": 0.5, "T_max": 30},
    {"type": "MultiStepParamScheduler", "param_name": "weight_decay", "milestones": [2, 4]},
    {"type": "ReduceOnPlateauLR", "monitor": "loss", "patience": 0, "factor": 0.5},
]
LOSSES = [1.0, 0.9, 0.95, 0.97, 0.5, 0.6]
METRICS: dict[int, dict[str, float] | None] = {e: {"loss": v} for e, v in enumerate(LOSSES)}
EPOCH_LENGTH, MAX_EPOCHS = 6, 6
TOTAL = EPOCH_LENGTH * MAX_EPOCHS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(data_dir=tmp_path_factory.mktemp("server")).start() as served:
        yield served


def _job() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"






def train(
    handle: ScheduleHandle,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    start: int,
    stop: int,
    epoch_length: int | None,
    metrics: Mapping[int, Mapping[str, float] | None],
    after_step: Any = None,
) -> list[list[dict[str, float]]]:
    """Iterations ``start..stop-1``; values recorded before every step and at the end."""
    recorded = []
    for t in range(start, stop):
        recorded.append(snapshot(optimizer, names))
        optimizer.step()
        if epoch_length and (t + 1) % epoch_length == 0:
            handle.end_epoch(metrics.get((t + 1) // epoch_length - 1))
        if after_step is not None:
            after_step(t)
    recorded.append(snapshot(optimizer, names))
    return recorded


def oracle(groups: list[dict[str, Any]]) -> tuple[list[Any], list[str]]:
    result = mmengine_curves(SCHEDULE, groups, EPOCH_LENGTH, MAX_EPOCHS, None, METRICS)
    assert result.ok, result.error
    return result.curves, result.param_names


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("groups", [SGD_GROUPS, ADAM_GROUPS], ids=["sgd", "adam"])
@pytest.mark.parametrize("plan_size", [5, 256])
def test_values_before_every_step_equal_mmengine(
    server: ServerProcess, groups: list[dict[str, Any]], plan_size: int
) -> None:
    expected, names = oracle(groups)
    opt = make_optimizer(groups)
    with Client(server.address, plan_size=plan_size) as client:
        handle = client.attach(
            opt, _job(), SCHEDULE, epoch_length=EPOCH_LENGTH, max_epochs=MAX_EPOCHS
        )
        with handle:
            got = train(handle, opt, names, 0, TOTAL, EPOCH_LENGTH, METRICS)
    problem = first_mismatch(expected, got, names)
    assert problem is None, problem


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases(), plan_size=st.sampled_from([1, 4, 256]))
def test_randomised_configs_match_mmengine_through_the_server(
    server: ServerProcess, case: Case, plan_size: int
) -> None:
    note(case.describe())
    result = mmengine_curves(
        case.param_scheduler,
        case.initial_values,
        case.epoch_length,
        case.max_epochs,
        case.max_iters,
        case.metrics,
    )
    assume(result.ok)
    opt = make_optimizer(case.initial_values)
    with Client(server.address, plan_size=plan_size) as client:
        try:
            handle = client.attach(
                opt,
                _job(),
                copy.deepcopy(case.param_scheduler),
                epoch_length=case.epoch_length,
                **case.loop_kwargs(),
            )
        except InvalidArgumentError:
            assume(False)  # the engine's own parity suite owns what it rejects
            raise
        with handle:
            length = case.epoch_length if case.max_epochs is not None else None
            got = train(handle, opt, result.param_names, 0, case.total_iters, length, case.metrics)
    problem = first_mismatch(result.curves, got, result.param_names)
    assert problem is None, problem


# --------------------------------------------------------------------------- ranks


def _ddp_example() -> Any:
    spec = importlib.util.spec_from_file_location("train_ddp", ROOT / "examples" / "train_ddp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_ddp(target: str, record: Path, world_size: int = 4) -> list[dict[str, Any]]:
    args = [
        sys.executable,
        str(ROOT / "examples" / "train_ddp.py"),
        target,
        "--job-id",
        _job(),
        "--world-size",
        str(world_size),
        "--epochs",
        "3",
        "--epoch-length",
        "5",
        "--record",
        str(record),
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads((record / f"rank{r}.json").read_text()) for r in range(world_size)]


def _check_ranks(ranks: list[dict[str, Any]]) -> None:
    first = ranks[0]
    for rank, data in enumerate(ranks[1:], start=1):
        assert data == first, f"rank {rank} saw other values or metrics than rank 0"
    example = _ddp_example()
    metrics = dict(enumerate(first["metrics"]))
    sgd = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "dampening": 0.0}]
    result = mmengine_curves(example.PARAM_SCHEDULER, sgd, 5, 3, None, metrics)
    assert result.ok, result.error
    names = ["lr", "momentum", "weight_decay"]
    expected = [[{n: g.get(n, sgd[0][n]) for n in names} for g in t] for t in result.curves]
    problem = first_mismatch(expected, first["values"], names)
    assert problem is None, problem


def test_four_ddp_ranks_see_identical_values_at_every_iteration(
    server: ServerProcess, tmp_path: Path
) -> None:
    _check_ranks(_run_ddp(server.address, tmp_path))


def test_four_ranks_on_two_servers_sharing_one_redis(tmp_path: Path) -> None:
    from redis_harness import RedisServer

    # No skip: a missing redis-server fails with the install hint.
    with RedisServer(data_dir=tmp_path / "redis") as redis:
        extra = ("--redis-url", redis.url)
        with (
            ServerProcess(data_dir=tmp_path / "a", args=list(extra)).start() as a,
            ServerProcess(data_dir=tmp_path / "b", args=list(extra)).start() as b,
        ):
            record = tmp_path / "record"
            record.mkdir()
            _check_ranks(_run_ddp(f"{a.address},{b.address}", record))


# --------------------------------------------------------------------------- durability


def test_resume_into_a_fresh_server_with_an_empty_store(tmp_path: Path) -> None:
    expected, names = oracle(SGD_GROUPS)
    job, n = _job(), 3 * EPOCH_LENGTH
    first_dir = tmp_path / "first"
    with ServerProcess(data_dir=first_dir).start() as first, Client(first.address) as client:
        opt = make_optimizer(SGD_GROUPS)
        handle = client.attach(opt, job, SCHEDULE, epoch_length=EPOCH_LENGTH, max_epochs=MAX_EPOCHS)
        before = train(handle, opt, names, 0, n, EPOCH_LENGTH, METRICS)
        torch.save(
            {"optimizer": opt.state_dict(), "scheduler": handle.state_dict()}, tmp_path / "c.pt"
        )
        handle.detach()
        first.kill()
    shutil.rmtree(first_dir)  # everything the first server knew is gone

    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    second_server = ServerProcess(data_dir=tmp_path / "second").start()
    with second_server as second, Client(second.address) as client:
        opt = make_optimizer(SGD_GROUPS)
        handle = client.attach(opt, job, SCHEDULE, epoch_length=EPOCH_LENGTH, max_epochs=MAX_EPOCHS)
        opt.load_state_dict(ckpt["optimizer"])
        handle.load_state_dict(ckpt["scheduler"])
        assert handle.iteration == n
        assert handle.generation > ckpt["scheduler"]["generation"]
        after = train(handle, opt, names, n, TOTAL, EPOCH_LENGTH, METRICS)
        handle.detach()
    assert first_mismatch(expected[: n + 1], before, names) is None
    assert first_mismatch(expected[n:], after, names, start=n) is None


def test_server_killed_mid_run_and_restarted_changes_nothing(tmp_path: Path) -> None:
    expected, names = oracle(SGD_GROUPS)
    server = ServerProcess(data_dir=tmp_path / "data").start()
    restarted = threading.Event()

    def crash(t: int) -> None:
        if t == 2 * EPOCH_LENGTH + 2:  # mid-epoch, after two acknowledged decisions
            server.kill()
            assert server.proc is not None and server.proc.returncode == -9

            def back() -> None:
                server.restart()
                restarted.set()

            threading.Timer(1.0, back).start()

    try:
        with Client(server.address, plan_size=4, wait_timeout=60, backoff_max=0.5) as client:
            opt = make_optimizer(SGD_GROUPS)
            handle = client.attach(
                opt, _job(), SCHEDULE, epoch_length=EPOCH_LENGTH, max_epochs=MAX_EPOCHS
            )
            generation = handle.generation
            got = train(handle, opt, names, 0, TOTAL, EPOCH_LENGTH, METRICS, after_step=crash)
            assert restarted.is_set()
            assert handle.generation == generation
            handle.detach()
    finally:
        restarted.wait(30)
        server.stop()
    problem = first_mismatch(expected, got, names)
    assert problem is None, problem


def test_single_process_example_runs_and_resumes(server: ServerProcess, tmp_path: Path) -> None:
    script = str(ROOT / "examples" / "train_single.py")
    ckpt, job = tmp_path / "ckpt.pt", _job()

    def run(*extra: str) -> str:
        args = [sys.executable, script, server.address, "--job-id", job, *extra]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    interrupted = run("--checkpoint", str(ckpt), "--stop-after", "1")
    resumed = run("--checkpoint", str(ckpt))
    job = _job()
    straight = run()
    assert interrupted + resumed == straight
    assert len(straight.splitlines()) == 4
