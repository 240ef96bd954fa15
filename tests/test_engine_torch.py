"""The Torch* scheduler types equal torch's own schedulers, bit for bit.

Each test builds a real torch optimizer and scheduler from random parameters, steps it
as a host would (every step, or only at the steps of a ``step_period``/``step_at``
pattern), and compares every lr (and momentum, for OneCycle) of every param group with
the engine's values for the translated config: ``==`` on the float64 python floats.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paramsched.server.schedules import (
    ConfigError,
    ScheduleArithmeticError,
    Timeline,
    build_job_spec,
)
from paramsched.server.schedules.torch_semantics import Stepping

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

lrs = st.lists(st.floats(1e-4, 1.0), min_size=1, max_size=2)
factor = st.floats(0.01, 1.0)
gammas = st.floats(0.5, 0.999)
steps_n = st.integers(1, 30)


def _optimizer(group_lrs: list[float], kind: str = "sgd") -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in group_lrs]
    if kind == "adam":
        return torch.optim.Adam(params)
    return torch.optim.SGD(params, momentum=0.9)


def _torch_curve(opt: torch.optim.Optimizer, scheduler: Any, n: int,
                 steps: Any = lambda g: True, keys: tuple[str, ...] = ("lr",)) -> list[Any]:
    """Values after construction and after each of n host steps (torch steps when
    ``steps(g)`` for the global step g = 1..n)."""
    def read() -> list[Any]:
        out = []
        for group in opt.param_groups:
            row = {}
            for key in keys:
                if key == "momentum" and "betas" in group:
                    row[key] = group["betas"][0]
                else:
                    row[key] = group[key]
            out.append(row)
        return out

    curve = [read()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "step before optimizer.step" hint
        for g in range(1, n + 1):
            if steps(g):
                scheduler.step()
            curve.append(read())
    return curve


def _engine_curve(configs: list[dict[str, Any]], opt: torch.optim.Optimizer, n: int,
                  keys: tuple[str, ...] = ("lr",), initial: list[dict[str, Any]] | None = None
                  ) -> list[Any]:
    if initial is None:
        initial = [{"lr": g["initial_lr"]} for g in opt.param_groups]
    spec = build_job_spec(configs, initial, max_iters=n)
    values = Timeline(spec).values_range(0, n + 1)
    return [[{k: row[k] for k in keys} for row in groups] for groups in values]


def _check(configs: list[dict[str, Any]], opt: torch.optim.Optimizer, scheduler: Any, n: int,
           steps: Any = lambda g: True, keys: tuple[str, ...] = ("lr",),
           initial: list[dict[str, Any]] | None = None) -> None:
    ours = _engine_curve(configs, opt, n, keys, initial)  # before torch steps the groups
    theirs = _torch_curve(opt, scheduler, n, steps, keys)
    assert ours == theirs


def _cfg(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": f"Torch{kind}LR", "by_epoch": False, **fields}


# -- one scheduler, stepped every iteration -----------------------------------------------

@SETTINGS
@given(lrs, st.floats(0.01, 1.0), st.floats(0.0, 1.0), st.integers(0, 12), steps_n)
def test_linear_lr(group_lrs, start, end, total, n):
    opt = _optimizer(group_lrs)
    cfg = _cfg("Linear", start_factor=start, end_factor=end, total_iters=total)
    _check([cfg], opt, torch.optim.lr_scheduler.LinearLR(opt, start, end, total), n)


@SETTINGS
@given(lrs, factor, st.integers(0, 12), steps_n)
def test_constant_lr(group_lrs, f, total, n):
    opt = _optimizer(group_lrs)
    cfg = _cfg("Constant", factor=f, total_iters=total)
    _check([cfg], opt, torch.optim.lr_scheduler.ConstantLR(opt, f, total), n)


@SETTINGS
@given(lrs, st.integers(1, 7), gammas, steps_n)
def test_step_lr(group_lrs, size, gamma, n):
    opt = _optimizer(group_lrs)
    cfg = _cfg("Step", step_size=size, gamma=gamma)
    _check([cfg], opt, torch.optim.lr_scheduler.StepLR(opt, size, gamma), n)


@SETTINGS
@given(lrs, st.lists(st.integers(0, 20), max_size=5), gammas, steps_n)
def test_multistep_lr(group_lrs, milestones, gamma, n):
    opt = _optimizer(group_lrs)
    cfg = _cfg("MultiStep", milestones=milestones, gamma=gamma)
    _check([cfg], opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma), n)


@SETTINGS
@given(lrs, gammas, steps_n)
def test_exponential_lr(group_lrs, gamma, n):
    opt = _optimizer(group_lrs)
    _check([_cfg("Exponential", gamma=gamma)], opt,
           torch.optim.lr_scheduler.ExponentialLR(opt, gamma), n)


@SETTINGS
@given(lrs, st.integers(1, 10), st.floats(0.0, 1e-4), st.integers(1, 40))
def test_cosine_annealing_lr_past_t_max(group_lrs, t_max, eta_min, n):
    opt = _optimizer(group_lrs)
    cfg = _cfg("CosineAnnealing", T_max=t_max, eta_min=eta_min)
    _check([cfg], opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, t_max, eta_min), n)


@SETTINGS
@given(lrs, st.integers(1, 12), st.floats(0.5, 3.0), steps_n)
def test_polynomial_lr(group_lrs, total, power, n):
    opt = _optimizer(group_lrs)
    cfg = _cfg("Polynomial", total_iters=total, power=power)
    _check([cfg], opt, torch.optim.lr_scheduler.PolynomialLR(opt, total, power), n)


@SETTINGS
@given(lrs, st.integers(2, 30), st.floats(0.1, 0.5), st.sampled_from(["cos", "linear"]),
       st.booleans(), st.sampled_from(["sgd", "adam"]), st.data())
def test_one_cycle_lr_and_momentum(group_lrs, total, pct, strategy, three, optim, data):
    opt = _optimizer(group_lrs, optim)
    max_lr = [lr * 10 for lr in group_lrs]
    momentum = "momentum" if optim == "sgd" else "betas"
    initial = [{"lr": g["lr"], momentum: g[momentum]} for g in opt.param_groups]
    fields = dict(max_lr=max_lr, total_steps=total, pct_start=pct,
                  anneal_strategy=strategy, three_phase=three)
    configs = [_cfg("OneCycle", **fields),
               {"type": "TorchOneCycleMomentum", "by_epoch": False, **fields}]
    try:
        build_job_spec(configs, initial, max_iters=total)
    except ConfigError as exc:  # an empty phase: torch divides by zero on the way
        assert exc.field == "param_scheduler[0].pct_start"
        with pytest.raises(ZeroDivisionError):
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr, total_steps=total, pct_start=pct, three_phase=three)
            _torch_curve(opt, scheduler, total)
        return
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr, total_steps=total, pct_start=pct, anneal_strategy=strategy,
        three_phase=three)
    n = data.draw(st.integers(1, total))
    ours = _engine_curve(configs, opt, n, ("lr", "momentum"), initial)
    assert ours == _torch_curve(opt, scheduler, n, keys=("lr", "momentum"))


def test_one_cycle_past_total_steps_is_torch_error():
    opt = _optimizer([0.1])
    cfg = _cfg("OneCycle", max_lr=1.0, total_steps=4)
    with pytest.raises(ScheduleArithmeticError, match="Tried to step 5 times"):
        _engine_curve([cfg], opt, 6, initial=[{"lr": 0.1}])


# -- stepping patterns: Lightning's frequency and epoch interval --------------------------

@SETTINGS
@given(lrs, st.integers(1, 5), st.data(), st.integers(1, 40))
def test_stepping_pattern_is_torch_stepped_at_those_steps(group_lrs, period, data, n):
    at = sorted(data.draw(st.sets(st.integers(0, period - 1), min_size=1)))
    opt = _optimizer(group_lrs)
    cfg = _cfg("Step", step_size=2, gamma=0.5, step_period=period, step_at=at)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    _check([cfg], opt, scheduler, n, steps=lambda g: g % period in at)


def test_stepping_counts_torch_epochs():
    s = Stepping(period=3, at=(0,), origin=0)
    assert [s.epoch(k) for k in range(7)] == [0, None, None, 1, None, None, 2]
    later = Stepping(period=2, at=(1,), origin=3)
    assert [later.epoch(k) for k in range(5)] == [0, None, 1, None, 2]


# -- SequentialLR: each later child restarts from torch's closed form -----------------------

CHILDREN = {
    "Linear": (lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.25, 1.0, 4),
               {"start_factor": 0.25, "end_factor": 1.0, "total_iters": 4}),
    "Constant": (lambda o: torch.optim.lr_scheduler.ConstantLR(o, 0.5, 3),
                 {"factor": 0.5, "total_iters": 3}),
    "Step": (lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.7), {"step_size": 2, "gamma": 0.7}),
    "MultiStep": (lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [0, 2, 5], 0.6),
                  {"milestones": [0, 2, 5], "gamma": 0.6}),
    "Exponential": (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9), {"gamma": 0.9}),
    "CosineAnnealing": (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 5, 1e-5),
                        {"T_max": 5, "eta_min": 1e-5}),
    "Polynomial": (lambda o: torch.optim.lr_scheduler.PolynomialLR(o, 6, 2.0),
                   {"total_iters": 6, "power": 2.0}),
}


@SETTINGS
@given(lrs, st.lists(st.sampled_from(sorted(CHILDREN)), min_size=1, max_size=3),
       st.data(), st.integers(1, 30))
def test_sequential_lr(group_lrs, kinds, data, n):
    gaps = data.draw(st.lists(st.integers(1, 8), min_size=len(kinds) - 1,
                              max_size=len(kinds) - 1))
    milestones = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    opt = _optimizer(group_lrs)
    children = [CHILDREN[k][0](opt) for k in kinds]
    scheduler = torch.optim.lr_scheduler.SequentialLR(opt, children, milestones)
    edges = [0, *milestones, 10**9]
    configs = [
        _cfg(k, begin=edges[i], end=edges[i + 1], closed_form_start=i > 0, **CHILDREN[k][1])
        for i, k in enumerate(kinds)]
    _check(configs, opt, scheduler, n)


@SETTINGS
@given(lrs, st.lists(st.sampled_from(sorted(CHILDREN)), min_size=2, max_size=3),
       st.integers(1, 4), st.data(), st.integers(1, 40))
def test_sequential_lr_stepped_by_a_pattern(group_lrs, kinds, period, data, n):
    at = sorted(data.draw(st.sets(st.integers(0, period - 1), min_size=1)))
    gaps = data.draw(st.lists(st.integers(1, 5), min_size=len(kinds) - 1,
                              max_size=len(kinds) - 1))
    milestones = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    opt = _optimizer(group_lrs)
    children = [CHILDREN[k][0](opt) for k in kinds]
    scheduler = torch.optim.lr_scheduler.SequentialLR(opt, children, milestones)
    hits = [g for g in range(1, 10 * (max(milestones) + 1) * period + 1) if g % period in at]
    # The window of a later child begins at the global step of torch's milestone-th step.
    edges = [0, *(hits[m - 1] for m in milestones), 10**9]
    stepping = {"step_period": period, "step_at": at}
    configs = [
        _cfg(k, begin=edges[i], end=edges[i + 1], closed_form_start=i > 0, **stepping,
             **CHILDREN[k][1])
        for i, k in enumerate(kinds)]
    _check(configs, opt, scheduler, n, steps=lambda g: g % period in at)


# -- ReduceLROnPlateau: torch's best starts at +-inf ------------------------------------------

@SETTINGS
@given(lrs, st.sampled_from(["min", "max"]), st.sampled_from(["rel", "abs"]),
       st.integers(0, 3), st.integers(0, 2), st.floats(0.1, 0.9),
       st.lists(st.sampled_from([1.0, 0.5, 2.0, 1e10, -1e10, 0.999]), min_size=1,
                max_size=15))
def test_reduce_lr_on_plateau(group_lrs, mode, threshold_mode, patience, cooldown, f, metrics):
    opt = _optimizer(group_lrs)
    initial = [{"lr": g["lr"]} for g in opt.param_groups]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=f, patience=patience, threshold_mode=threshold_mode,
        cooldown=cooldown, min_lr=1e-6)
    cfg = {"type": "TorchReduceOnPlateauLR", "monitor": "loss", "mode": mode, "factor": f,
           "patience": patience, "threshold_mode": threshold_mode, "cooldown": cooldown,
           "min_lr": 1e-6}
    n = len(metrics)
    spec = build_job_spec([cfg], initial, epoch_length=1, max_epochs=n)
    decisions = {e: {"loss": m} for e, m in enumerate(metrics)}
    ours = [[g["lr"] for g in row] for row in Timeline(spec).values_range(0, n + 1, decisions)]
    theirs = [[g["lr"] for g in opt.param_groups]]
    for m in metrics:
        scheduler.step(m)
        theirs.append([g["lr"] for g in opt.param_groups])
    assert ours == theirs


def test_plateau_best_starts_at_inf_unlike_mmengine():
    # A first metric above MMEngine's 1e9 start is "better" for torch only.
    initial = [{"lr": 0.1}]
    common = {"factor": 0.5, "patience": 0}
    torch_cfg = {"type": "TorchReduceOnPlateauLR", **common}
    mm_cfg = {"type": "ReduceOnPlateauLR", "end": 5, **common}
    decisions = {0: {"loss": 2e9}}
    ours = Timeline(build_job_spec([torch_cfg], initial, epoch_length=1, max_epochs=1))
    mm = Timeline(build_job_spec([mm_cfg], initial, epoch_length=1, max_epochs=1))
    assert ours.values_at(1, decisions)[0]["lr"] == 0.1
    assert mm.values_at(1, decisions)[0]["lr"] == 0.05


# -- bad input names the field -------------------------------------------------------------

@pytest.mark.parametrize(("cfg", "field"), [
    (_cfg("Step", gamma=0.5), "step_size"),
    (_cfg("Linear", start_factor=0.0), "start_factor"),
    (_cfg("Step", step_size=2, step_period=2, step_at=[2]), "step_at"),
    (_cfg("CosineAnnealing", T_max=0), "T_max"),
    (_cfg("OneCycle", max_lr=1.0, total_steps=10, closed_form_start=True), "closed_form_start"),
    (_cfg("Exponential", gamma=0.9, convert_to_iter_based=True, by_epoch=True),
     "convert_to_iter_based"),
    ({"type": "TorchReduceOnPlateauLR", "by_epoch": False}, "by_epoch"),
    ({"type": "TorchReduceOnPlateauLR", "min_lr": [0.1, 0.2]}, "min_lr"),
])
def test_bad_torch_config_names_the_field(cfg, field):
    with pytest.raises(ConfigError) as info:
        build_job_spec([cfg], [{"lr": 0.1}], epoch_length=2, max_epochs=3)
    assert info.value.field == f"param_scheduler[0].{field}"
