"""The client's pure parts: plan decoding, rank resolution, reading and writing
param groups, config encoding, error mapping, and the import boundary."""

from __future__ import annotations

import ast
import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import grpc
import pytest
import torch

from paramsched.api.v1 import scheduler_pb2
from paramsched.client import errors
from paramsched.client.optim import (
    Writer,
    apply_row,
    initial_values,
    metrics_dict,
    read_values,
    writers,
)
from paramsched.client.plan import NEVER, PlanSizer, decode_plan
from paramsched.client.ranks import resolve_rank
from paramsched.client.spec import build_spec, config_json

CLIENT_DIR = pathlib.Path(__file__).resolve().parent.parent / "client"


def _params(n: int = 2) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2)) for _ in range(n)]


# --------------------------------------------------------------------------- plans


def _wire_plan(start: int, n: int, groups: int, params: list[str], **kw: Any) -> Any:
    values = [
        float(1000 * i + 10 * g + p)
        for i in range(start, start + n)
        for g in range(groups)
        for p in range(len(params))
    ]
    return scheduler_pb2.Plan(
        start_iteration=start,
        num_iterations=n,
        params=params,
        num_groups=groups,
        values=values,
        generation=3,
        **kw,
    )


def test_plan_rows_follow_the_wire_layout_iteration_group_param() -> None:
    plan = decode_plan(_wire_plan(5, 3, 2, ["lr", "momentum"]), max_iters=100)
    assert (plan.start, plan.stop, plan.generation) == (5, 8, 3)
    assert plan.row(6) == (6000.0, 6001.0, 6010.0, 6011.0)
    assert plan.group_values(7) == [
        {"lr": 7000.0, "momentum": 7001.0},
        {"lr": 7010.0, "momentum": 7011.0},
    ]
    assert plan.covers(5) and plan.covers(7) and not plan.covers(8) and not plan.covers(4)


def test_a_young_plan_asks_for_a_refill_at_a_quarter_any_other_at_half() -> None:
    assert decode_plan(_wire_plan(10, 8, 1, ["lr"]), max_iters=100).refill_at == 14
    young = decode_plan(_wire_plan(10, 256, 1, ["lr"]), max_iters=10**6)
    assert young.refill_at == 10 + 64
    # ... or on its first step when the loop will outgrow it (plans double back to back)
    growing = decode_plan(_wire_plan(10, 256, 1, ["lr"]), max_iters=10**6, growing=True)
    assert growing.refill_at == 10 + 1
    assert decode_plan(_wire_plan(10, 4096, 1, ["lr"]), max_iters=10**6,
                       growing=True).refill_at == 10 + 2048


def test_only_a_loop_fast_enough_to_outgrow_a_plan_grows_it() -> None:
    sizer = PlanSizer(256, 4096, 2.0)
    assert sizer.grows_past(1024)  # no rate yet: assume a fast loop
    sizer.rate = 100.0  # 100 it/s x 2 s = 200 iterations: the minimum serves it
    assert not sizer.grows_past(256)
    sizer.rate = 10_000.0
    assert sizer.grows_past(2048) and not sizer.grows_past(4096)
    sizer.restart(0)
    assert sizer.rate is None
    long = decode_plan(_wire_plan(10, 4096, 1, ["lr"]), max_iters=10**6)
    assert long.refill_at == 10 + 2048


def test_plan_reaching_the_end_of_the_job_or_a_decision_needs_no_refill() -> None:
    assert decode_plan(_wire_plan(10, 8, 1, ["lr"]), max_iters=17).refill_at == NEVER
    waiting = decode_plan(_wire_plan(0, 4, 1, ["lr"], waits_for_epoch=0), max_iters=100)
    assert waiting.refill_at == NEVER and waiting.waits_for_epoch == 0
    assert decode_plan(_wire_plan(0, 4, 1, ["lr"]), max_iters=100).waits_for_epoch is None


def test_malformed_plan_is_an_error_not_a_guess() -> None:
    message = _wire_plan(0, 3, 2, ["lr"])
    del message.values[-1]
    with pytest.raises(errors.ParamschedError, match="malformed plan"):
        decode_plan(message, max_iters=10)


# --------------------------------------------------------------------------- ranks


def test_explicit_rank_wins_over_the_environment() -> None:
    assert resolve_rank(2, 4, env={"RANK": "1", "WORLD_SIZE": "8"}) == (2, 4)


def test_rank_comes_from_the_environment_without_torch_distributed() -> None:
    assert resolve_rank(env={"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert resolve_rank(world_size=8, env={"RANK": "5"}) == (5, 8)


def test_single_process_is_rank_0_of_1() -> None:
    assert resolve_rank(env={}) == (0, 1)


@pytest.mark.parametrize(
    ("rank", "world", "env", "match"),
    [
        (4, 4, {}, "rank must be in"),
        (None, 0, {}, "world_size must be"),
        (None, None, {"RANK": "x"}, "RANK='x'"),
    ],
)
def test_nonsense_ranks_are_refused(rank: Any, world: Any, env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_rank(rank, world, env=env)


# --------------------------------------------------------------------------- reading groups


def test_initial_values_of_sgd_are_every_numeric_key_but_flags() -> None:
    a, b = _params()
    groups: list[dict[str, Any]] = [{"params": [a]}, {"params": [b], "lr": 0.5, "custom": 3}]
    opt = torch.optim.SGD(
        groups,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        nesterov=True,
    )
    groups = initial_values(opt)
    assert groups[0] == {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 1e-4}
    assert groups[1]["lr"] == 0.5 and groups[1]["custom"] == 3.0
    assert all(isinstance(v, float) for g in groups for v in g.values())


def test_initial_values_of_adam_carry_betas_and_not_a_momentum_mirror() -> None:
    opt = torch.optim.Adam(_params(1), lr=1e-3, betas=(0.85, 0.99))
    opt.param_groups[0]["momentum"] = 0.85  # what MMEngine / an earlier attach leaves
    (group,) = initial_values(opt)
    assert group["betas"] == [0.85, 0.99]
    assert "momentum" not in group


def test_tensor_hyperparameters_are_read_with_item() -> None:
    opt = torch.optim.Adam(_params(1), lr=torch.tensor(0.02), foreach=False)
    assert initial_values(opt)[0]["lr"] == pytest.approx(0.02)


# --------------------------------------------------------------------------- writing groups


def test_plain_values_are_replaced() -> None:
    opt = torch.optim.SGD(_params(1), lr=0.1, momentum=0.9)
    apply_row(opt, [Writer(0, "lr", False), Writer(0, "momentum", False)], (0.5, 0.7))
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["momentum"] == 0.7


def test_tensor_values_are_filled_in_place_never_replaced() -> None:
    lr = torch.tensor(0.1)
    opt = torch.optim.Adam(_params(1), lr=lr, foreach=False)
    held = opt.param_groups[0]["lr"]
    apply_row(opt, [Writer(0, "lr", False)], (0.25,))
    assert opt.param_groups[0]["lr"] is held
    assert held.item() == 0.25


def test_adam_momentum_goes_to_betas0_and_the_momentum_key() -> None:
    opt = torch.optim.Adam(_params(1), betas=(0.9, 0.999))
    apply_row(opt, [Writer(0, "momentum", True)], (0.8,))
    assert opt.param_groups[0]["betas"] == (0.8, 0.999)
    assert opt.param_groups[0]["momentum"] == 0.8


def test_tensor_betas_are_filled_in_place() -> None:
    beta0, beta1 = torch.tensor(0.9), torch.tensor(0.999)
    opt = torch.optim.Adam(_params(1), betas=(beta0, beta1), foreach=False)
    held = opt.param_groups[0]["betas"][0]
    apply_row(opt, [Writer(0, "momentum", True)], (0.7,))
    assert opt.param_groups[0]["betas"][0] is held
    assert held.item() == pytest.approx(0.7)


def test_writers_survive_optimizer_load_state_dict_replacing_the_groups() -> None:
    opt = torch.optim.SGD(_params(1), lr=0.1)
    row_writers = writers(opt, ["lr"], 1, False, "job")
    opt.load_state_dict(opt.state_dict())  # new group dicts
    apply_row(opt, row_writers, (0.3,))
    assert opt.param_groups[0]["lr"] == 0.3
    assert read_values(opt, ["lr"], False) == [{"lr": 0.3}]


def test_param_group_count_mismatch_is_a_clear_error() -> None:
    opt = torch.optim.SGD(_params(1), lr=0.1)
    with pytest.raises(errors.AttachError, match=r"schedules 2 param group.*optimizer has 1"):
        writers(opt, ["lr"], 2, False, "job-a")


def test_a_scheduled_key_missing_from_a_group_is_a_clear_error() -> None:
    opt = torch.optim.Adam(_params(1))
    with pytest.raises(errors.AttachError, match="no 'momentum'"):
        writers(opt, ["lr", "momentum"], 1, False, "job-a")
    assert len(writers(opt, ["lr", "momentum"], 1, True, "job-a")) == 2


def test_metrics_become_plain_floats() -> None:
    assert metrics_dict(None) is None
    assert metrics_dict({"loss": torch.tensor(0.5), "acc": 1}) == {"loss": 0.5, "acc": 1.0}
    with pytest.raises(TypeError, match="'loss' must be a number"):
        metrics_dict({"loss": "low"})


# --------------------------------------------------------------------------- spec


def test_config_json_keeps_ints_and_floats_apart_and_accepts_tuples_and_scalars() -> None:
    cfg = [
        {"type": "MultiStepLR", "milestones": (2, 4), "gamma": torch.tensor(0.5)},
        {"type": "LinearLR", "start_factor": 0.25, "end": 10},
    ]
    decoded = json.loads(config_json(cfg))
    assert decoded[0]["milestones"] == [2, 4] and decoded[0]["gamma"] == 0.5
    assert isinstance(decoded[1]["end"], int) and isinstance(decoded[1]["start_factor"], float)
    assert json.loads(config_json({"type": "ConstantLR"})) == {"type": "ConstantLR"}


def test_spec_needs_exactly_one_loop_length() -> None:
    opt = torch.optim.SGD(_params(1), lr=0.1)
    cfg = {"type": "ConstantLR"}
    with pytest.raises(ValueError, match="exactly one of max_epochs"):
        build_spec(opt, cfg, epoch_length=2, max_epochs=3, max_iters=6)
    with pytest.raises(ValueError, match="needs epoch_length"):
        build_spec(opt, cfg, epoch_length=None, max_epochs=3, max_iters=None)
    spec = build_spec(opt, cfg, epoch_length=None, max_epochs=None, max_iters=6)
    assert spec.max_iters == 6 and not spec.HasField("max_epochs")
    assert dict(spec.initial_values[0].values)["lr"] == 0.1


def test_spec_sends_betas_as_a_list() -> None:
    opt = torch.optim.Adam(_params(1), betas=(0.9, 0.95))
    spec = build_spec(opt, {"type": "ConstantLR"}, epoch_length=3, max_epochs=2, max_iters=None)
    assert list(spec.initial_values[0].betas) == [0.9, 0.95]
    assert math.isclose(spec.initial_values[0].values["lr"], 1e-3)


# --------------------------------------------------------------------------- errors


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "boom") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.JobNotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, errors.JobSpecMismatchError),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.StaleGenerationError),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (grpc.StatusCode.INTERNAL, errors.ParamschedError),
    ],
)
def test_status_codes_map_to_client_errors(
    code: grpc.StatusCode, cls: type[errors.ParamschedError]
) -> None:
    error: errors.ParamschedError = errors.from_rpc_error(
        _RpcError(code, "field 'x': bad"), "attaching", server="sched.example:50051"
    )
    assert type(error) is cls
    assert "attaching" in str(error) and "field 'x': bad" in str(error) and error.code is code
    assert "sched.example:50051" in str(error)  # every message names the server


def test_only_transport_failures_are_retryable() -> None:
    assert errors.is_retryable(_RpcError(grpc.StatusCode.UNAVAILABLE))
    assert errors.is_retryable(_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert not errors.is_retryable(_RpcError(grpc.StatusCode.INVALID_ARGUMENT))
    assert not errors.is_retryable(ValueError())
    # A progress report cut off by a server shutting down (CANCELLED) is retried too;
    # a change or an admin call is not (it might have been applied).
    assert not errors.is_retryable(_RpcError(grpc.StatusCode.CANCELLED))
    assert errors.is_retryable_report(_RpcError(grpc.StatusCode.CANCELLED))
    assert errors.is_retryable_report(_RpcError(grpc.StatusCode.UNAVAILABLE))
    assert not errors.is_retryable_report(_RpcError(grpc.StatusCode.FAILED_PRECONDITION))


# --------------------------------------------------------------------------- boundary


def test_client_sources_never_import_server_code() -> None:
    for path in CLIENT_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            for name in names:
                assert "server" not in name.split("."), f"{path.name} imports {name}"
                assert not name.startswith(".."), f"{path.name} imports {name} (outside client)"


def test_importing_the_client_loads_no_server_module() -> None:
    code = (
        "import sys; from paramsched import Client; import paramsched.client; "
        "bad = [m for m in sys.modules if m.startswith('paramsched.server')]; "
        "assert not bad, bad; print(Client.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "paramsched.client.client"
