"""Validation points of iteration-based jobs (``val_interval``) against the real MMEngine.

MMEngine's ``IterBasedTrainLoop`` runs its val loop after iterations ``val_interval``,
``2 * val_interval``, ... and after the last one; ``ParamSchedulerHook.after_val_epoch``
then steps every ReduceOnPlateau with the metrics. The oracle below drives the real
schedulers in that order (``oracle_mmengine`` builds them as the Runner does); the engine
must give the same values at every iteration, stop at every pending decision, and key
decision ``k`` to the validation after ``min((k + 1) * val_interval, max_iters)``
iterations.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("mmengine")

from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from mmengine.registry import PARAM_SCHEDULERS

from paramsched.server.schedules import (
    ConfigError,
    DecisionPending,
    MetricsError,
    Timeline,
    build_job_spec,
)

from oracle_mmengine import CRASH_TYPES, _snapshot, build_optimizer, first_mismatch
from strategies import _Loop, initial_values, scheduler_cfg

Decisions = dict[int, dict[str, float] | None]


def points(max_iters: int, val_interval: int) -> list[int]:
    """The iteration counts after which IterBasedTrainLoop validates (val_begin=1)."""
    out = list(range(val_interval, max_iters + 1, val_interval))
    return out if out and out[-1] == max_iters else [*out, max_iters]


def mmengine_iter_curves(param_scheduler: Sequence[Mapping[str, Any]],
                         initial: Sequence[Mapping[str, Any]], epoch_length: int,
                         max_iters: int, val_interval: int,
                         decisions: Decisions) -> list[list[dict[str, float]]] | None:
    """The real schedulers driven as IterBasedTrainLoop + ParamSchedulerHook do; values
    per iteration ``0..max_iters``. None when MMEngine crashes on this config."""
    optimizer = build_optimizer(initial)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            schedulers = []
            for cfg in param_scheduler:  # Runner._build_param_scheduler
                cfg = copy.deepcopy(dict(cfg))
                cfg.setdefault("end", 1 if cfg.get("by_epoch", True) else max_iters)
                schedulers.append(PARAM_SCHEDULERS.build(
                    cfg, default_args=dict(optimizer=optimizer, epoch_length=epoch_length)))
            names = list(dict.fromkeys(s.param_name for s in schedulers))
            betas = any(getattr(s, "use_betas", False) for s in schedulers)
            curves = []
            due = {n: k for k, n in enumerate(points(max_iters, val_interval))}
            for t in range(max_iters):
                curves.append(_snapshot(optimizer.param_groups, names, betas))
                optimizer.step()
                for s in schedulers:  # after_train_iter
                    if not s.by_epoch:
                        s.step()
                metrics = decisions.get(due[t + 1]) if t + 1 in due else None
                if metrics is not None:  # the val loop, then after_val_epoch
                    for s in schedulers:
                        if s.by_epoch and getattr(s, "need_val_args", False):
                            s.step(dict(metrics))
            for s in schedulers:  # after_train_epoch, once, after the loop
                if s.by_epoch:
                    s.step()
            curves.append(_snapshot(optimizer.param_groups, names, betas))
        except CRASH_TYPES:
            return None
    return curves


def plateau(monitor: str = "loss", flavour: str = "LR", **kw: Any) -> dict[str, Any]:
    return {"type": f"ReduceOnPlateau{flavour}", "monitor": monitor, **kw}


def check(param_scheduler: list[dict[str, Any]], initial: list[dict[str, Any]],
          max_iters: int, val_interval: int, decisions: Decisions,
          epoch_length: int = 3) -> list[list[dict[str, float]]]:
    expected = mmengine_iter_curves(param_scheduler, initial, epoch_length, max_iters,
                                    val_interval, decisions)
    assert expected is not None, "MMEngine crashed on a case meant to run"
    spec = build_job_spec(copy.deepcopy(param_scheduler), copy.deepcopy(initial),
                          epoch_length=epoch_length, max_iters=max_iters,
                          val_interval=val_interval)
    names = list(expected[0][0])
    got = Timeline(spec).values_range(0, max_iters + 1, decisions)
    assert first_mismatch(expected, got, names) is None, first_mismatch(expected, got, names)
    for interval in (1, 4):  # random access through keyframes, asked backwards
        framed = Timeline(spec, keyframe_interval=interval)
        for t in range(max_iters, -1, -3):
            problem = first_mismatch([expected[t]], [framed.values_at(t, decisions)], names,
                                     start=t)
            assert problem is None, f"keyframes every {interval}: {problem}"
    return expected


SGD = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}]
LOSSES = [1.0, 1.0, 0.9, 2.0, 2.0, 0.5, 0.6, 0.6]


def test_plateau_steps_after_every_val_interval_and_after_the_last_iteration():
    scheds = [{"type": "LinearLR", "start_factor": 0.5, "by_epoch": False, "end": 4},
              plateau(patience=0, factor=0.5), plateau(flavour="Momentum", patience=1,
                                                       factor=0.9)]
    decisions: Decisions = {k: {"loss": x} for k, x in enumerate(LOSSES[:4])}
    curves = check(scheds, SGD, max_iters=11, val_interval=3, decisions=decisions)
    lrs = [g[0]["lr"] for g in curves]
    # points after 3, 6, 9 and 11 iterations; losses 1.0 (best), 1.0 (not better: cut),
    # 0.9 (better), 2.0 (cut): the cuts land on iterations 6 and 11
    assert lrs[6] == lrs[5] / 2 and lrs[9] == lrs[8] and lrs[11] == lrs[10] / 2


def test_not_validated_points_and_the_missing_last_one():
    scheds = [plateau(patience=0, factor=0.5, rule="greater")]
    decisions: Decisions = {0: {"loss": 1.0}, 1: None, 2: {"loss": 0.5}, 3: None}
    check(scheds, SGD, max_iters=8, val_interval=2, decisions=decisions)


def test_a_plateau_window_not_holding_global_step_0_never_acts_in_an_iteration_loop():
    # The plateau's global step counts epoch ends: 0 at every check inside the loop.
    scheds = [plateau(patience=0, factor=0.5, begin=1, end=5)]
    decisions: Decisions = {k: {"loss": 10.0 - k} for k in range(4)}
    curves = check(scheds, SGD, max_iters=8, val_interval=2, decisions=decisions)
    assert {g[0]["lr"] for g in curves} == {0.1}
    spec = build_job_spec(scheds, SGD, max_iters=8, val_interval=2)
    assert Timeline(spec).values_range(0, 9, {}) == Timeline(spec).values_range(0, 9, decisions)


def test_values_stop_at_each_pending_validation_point():
    spec = build_job_spec([plateau(patience=0)], SGD, max_iters=10, val_interval=4)
    assert [spec.decision_at(n) for n in range(12)] == [
        None, None, None, None, 0, None, None, None, 1, None, 2, None]
    assert [spec.decision_iteration(k) for k in range(3)] == [4, 8, 10]
    assert [spec.decisions_done(n) for n in (0, 3, 4, 9, 10)] == [0, 0, 1, 2, 3]
    timeline = Timeline(spec)
    assert len(timeline.values_range(0, 11, {}, partial=True)) == 4
    with pytest.raises(DecisionPending):
        timeline.values_range(0, 11, {0: {"loss": 1.0}})
    assert len(timeline.values_range(0, 11, {0: {"loss": 1.0}}, partial=True)) == 8
    full = {0: {"loss": 1.0}, 1: None, 2: {"loss": 3.0}}
    assert len(timeline.values_range(0, 11, full)) == 11


def test_decisions_are_checked_like_epochs():
    spec = build_job_spec([plateau(monitor="acc")], SGD, max_iters=6, val_interval=3)
    timeline = Timeline(spec)
    with pytest.raises(MetricsError, match="'acc'"):
        timeline.check_metrics(0, {"loss": 1.0})
    timeline.check_metrics(1, None)


@pytest.mark.parametrize("bad, match", [
    (dict(val_interval=0), "must be >= 1"),
    (dict(val_interval=True), "must be an integer"),
    (dict(val_interval=2.0), "must be an integer"),
])
def test_bad_val_interval_is_refused_naming_the_field(bad, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_job_spec([plateau()], SGD, max_iters=6, **bad)
    assert info.value.field == "val_interval"


def test_val_interval_is_for_iteration_based_jobs_only():
    with pytest.raises(ConfigError, match="iteration-based") as info:
        build_job_spec([plateau()], SGD, epoch_length=2, max_epochs=3, val_interval=2)
    assert info.value.field == "val_interval"


def test_val_interval_round_trips_and_is_absent_from_older_specs():
    spec = build_job_spec([plateau()], SGD, max_iters=6, val_interval=2)
    assert spec.to_dict()["val_interval"] == 2
    assert type(spec).from_dict(spec.to_dict()) == spec
    assert "val_interval" not in build_job_spec([plateau()], SGD, max_iters=6).to_dict()


# --------------------------------------------------------------------------- hypothesis

METRIC = st.sampled_from([2.0, 1.0, 1.0, 0.9, 0.9, 0.8, 0.85, 0.5, 0.49995] * 4
                         + [math.nan, math.inf, -math.inf])


@st.composite
def val_cases(draw: st.DrawFn) -> dict[str, Any]:
    initial = draw(initial_values())
    max_iters = draw(st.integers(1, 30))
    epoch_length = draw(st.integers(1, 7))
    loop = _Loop(epoch_length, None, max_iters, len(initial), "betas" in initial[0])
    others = draw(st.lists(scheduler_cfg(loop), max_size=3))
    flavour = draw(st.sampled_from(["LR", "LR", "Momentum"]))
    kw: dict[str, Any] = {
        "rule": draw(st.sampled_from(["less", "greater"])),
        "patience": draw(st.integers(0, 2)),
        "factor": draw(st.sampled_from([0.1, 0.5, 0.9])),
        "threshold_rule": draw(st.sampled_from(["rel", "abs"])),
        "cooldown": draw(st.integers(0, 2)),
    }
    if draw(st.booleans()):
        kw["min_value"] = draw(st.sampled_from([0.0, 0.01, 0.05]))
    at = draw(st.integers(0, len(others)))
    scheds = [*others[:at], plateau(flavour=flavour, **kw), *others[at:]]
    val_interval = draw(st.integers(1, max_iters + 2))
    n = len(points(max_iters, val_interval))
    decisions: Decisions = {
        k: (None if draw(st.integers(0, 4)) == 0 else {"loss": draw(METRIC)})
        for k in range(n)}
    return dict(param_scheduler=scheds, initial=initial, epoch_length=epoch_length,
                max_iters=max_iters, val_interval=val_interval, decisions=decisions)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=val_cases())
def test_parity_random_val_intervals_and_metrics(case: dict[str, Any]) -> None:
    note(repr(case))
    expected = mmengine_iter_curves(
        case["param_scheduler"], case["initial"], case["epoch_length"], case["max_iters"],
        case["val_interval"], case["decisions"])
    assume(expected is not None)  # configs MMEngine refuses: test_engine_parity's subject
    try:
        spec = build_job_spec(copy.deepcopy(case["param_scheduler"]), case["initial"],
                              epoch_length=case["epoch_length"], max_iters=case["max_iters"],
                              val_interval=case["val_interval"])
    except ConfigError:
        assume(False)  # refused up front where MMEngine crashes in a longer run
        raise
    assert expected is not None
    names = list(expected[0][0])
    decisions = case["decisions"]
    got = Timeline(spec).values_range(0, case["max_iters"] + 1, decisions)
    problem = first_mismatch(expected, got, names)
    assert problem is None, problem
    # Withholding decision j: the values stop exactly at its point, if any plateau
    # reads it (a pending decision never lets a value through).
    for j in range(len(decisions)):
        known = {k: d for k, d in decisions.items() if k < j}
        part = Timeline(spec).values_range(0, case["max_iters"] + 1, known, partial=True)
        if len(part) < len(got):
            assert len(part) == spec.decision_iteration(spec.decision_at(len(part)) or 0)
            assert spec.decision_at(len(part)) >= j
        assert first_mismatch(expected[:len(part)], part, names) is None
