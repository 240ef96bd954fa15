"""Issue 12's configs end to end: ``Client.attach`` against a real ``paramsched serve``.

A float32 tensor ``lr`` (``Adam(lr=torch.tensor(1e-3))``) is sent with its dtype and the
values the rank applies are MMEngine's, bit for bit (the tensor holds each value; where
MMEngine itself swaps the tensor for a Python float, after a ReduceOnPlateau reduction or
a OneCycle step, the rank's tensor holds that float rounded to float32). Adam with a
generic scheduler on ``momentum``, NaN metrics, ``end=inf`` and scoped names go through
the same way. ``PARAMSCHED_E2E_EXAMPLES`` (default 12) sizes the randomised test.
"""

from __future__ import annotations

import copy
import math
import os
import uuid
from collections.abc import Iterator, Mapping

import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings

from paramsched import Client
from paramsched.client import InvalidArgumentError, ScheduleHandle
from paramsched.server.schedules.float32 import round32

from oracle_mmengine import build_optimizer, first_mismatch, mmengine_curves
from process_harness import ServerProcess
from strategies import Case, cases

EXAMPLES = int(os.environ.get("PARAMSCHED_E2E_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(data_dir=tmp_path_factory.mktemp("server")).start() as served:
        yield served


def _snapshot(optimizer: torch.optim.Optimizer, names: list[str]) -> list[dict[str, float]]:
    betas = "momentum" not in optimizer.defaults and "betas" in optimizer.defaults
    return [{n: float(g["betas"][0] if n == "momentum" and betas else g[n]) for n in names}
            for g in optimizer.param_groups]


def _train(handle: ScheduleHandle, optimizer: torch.optim.Optimizer, names: list[str],
           total: int, epoch_length: int | None,
           metrics: Mapping[int, Mapping[str, float] | None]) -> list[list[dict[str, float]]]:
    recorded = []
    for t in range(total):
        recorded.append(_snapshot(optimizer, names))
        optimizer.step()
        if epoch_length and (t + 1) % epoch_length == 0:
            handle.end_epoch(metrics.get((t + 1) // epoch_length - 1))
    recorded.append(_snapshot(optimizer, names))
    return recorded


def _held(expected: list[list[dict[str, float]]],
          dtypes: list[dict[str, str]] | None) -> list[list[dict[str, float]]]:
    """What the rank's optimizer holds: float32 tensors hold values rounded to float32."""
    if not dtypes:
        return expected
    return [[{n: round32(v) if dtypes[g].get(n) == "float32" else v for n, v in group.items()}
             for g, group in enumerate(step)] for step in expected]


def _run(server: ServerProcess, case: Case, plan_size: int = 4) -> bool:
    """Parity through the server; False if MMEngine or paramsched refuses the job."""
    result = mmengine_curves(case.param_scheduler, case.initial_values, case.epoch_length,
                             case.max_epochs, case.max_iters, case.metrics, dtypes=case.dtypes)
    if not result.ok:
        return False
    opt = build_optimizer(case.initial_values, case.dtypes)
    with Client(server.address, plan_size=plan_size) as client:
        try:
            handle = client.attach(opt, f"e2e12-{uuid.uuid4().hex[:10]}",
                                   copy.deepcopy(case.param_scheduler),
                                   epoch_length=case.epoch_length, **case.loop_kwargs())
        except InvalidArgumentError:
            return False  # the engine's parity suite owns what it refuses
        with handle:
            length = case.epoch_length if case.max_epochs is not None else None
            got = _train(handle, opt, result.param_names, case.total_iters, length, case.metrics)
    expected = _held(result.curves, case.dtypes)
    problem = first_mismatch(expected, got, result.param_names)
    assert problem is None, problem
    for step_e, step_g in zip(expected, got, strict=True):  # float32 values: bit for bit
        for g, types in enumerate(case.dtypes or []):
            for name in types:
                if name in result.param_names:
                    assert step_e[g][name] == step_g[g][name]
    return True


ADAM = [{"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0},
        {"lr": 3e-4, "betas": [0.85, 0.99], "weight_decay": 0.01}]


def test_issue_12_configs_through_the_server(server: ServerProcess) -> None:
    case = Case(
        param_scheduler=[
            {"type": "mmengine.LinearLR", "start_factor": 0.1, "by_epoch": 0, "end": 7},
            {"type": "CosineAnnealingLR", "eta_min": 1e-6, "by_epoch": False, "begin": 7,
             "end": math.inf},
            {"type": "ConstantMomentum", "factor": 1.0, "by_epoch": False},
            {"type": "ConstantParamScheduler", "param_name": "momentum", "factor": 0.5,
             "by_epoch": False, "end": 3},
            {"type": "MultiStepParamScheduler", "param_name": "weight_decay",
             "milestones": [1.0, 2.5], "convert_to_iter_based": 1},
            {"type": "ReduceOnPlateauLR", "patience": 0, "factor": 0.5, "begin": -1},
        ],
        initial_values=copy.deepcopy(ADAM),
        epoch_length=4,
        max_epochs=4,
        metrics={0: {"loss": math.nan}, 1: {"loss": 1.0, "other": math.inf}, 2: None,
                 3: {"loss": -math.inf}},
        dtypes=[{"lr": "float32"}, {}],
    )
    assert _run(server, case)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.filter_too_much])
@given(case=cases())
def test_randomised_float32_lr_jobs_through_the_server(server: ServerProcess,
                                                       case: Case) -> None:
    case.dtypes = [{"lr": "float32"} for _ in case.initial_values]
    note(case.describe())
    assume(_run(server, case))
