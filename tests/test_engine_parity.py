"""Differential tests: our schedule engine against MMEngine's real schedulers.

Every generated job runs through ``mmengine_curves`` (MMEngine 0.10.7, driven as the
Runner's ParamSchedulerHook does) and through ``paramsched.server.schedules``:

* configs MMEngine crashes on must be rejected by ``build_job_spec`` (ConfigError);
* otherwise the value of every param group and scheduled param at every iteration
  ``0..max_iters`` must agree to ``rel_tol=1e-9``, whether asked by ``values_range``
  or by random access ``values_at``.

The generator (``strategies.cases``) covers issue 12's inputs too: up to six schedulers,
negative/fractional/infinite windows, ints for bools, floats for ints, scoped type names,
generic schedulers on Adam's ``momentum``, NaN/inf metrics and float32 tensor lrs
(``Case.dtypes``). The random test is derandomized and sized for CI (``PARAMSCHED_PARITY_QUICK``
examples, default 2000). A second, randomized search explores new jobs on every run
(``PARAMSCHED_PARITY_EXAMPLES`` examples, default 200; e.g. 20000 for a long hunt); a
failure prints the blob that reproduces it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from paramsched.server.schedules import ReplayState, Timeline, build_job_spec

from oracle_mmengine import assert_engine_matches_mmengine, mmengine_curves
from strategies import Case, cases

QUICK_EXAMPLES = int(os.environ.get("PARAMSCHED_PARITY_QUICK", "2000"))
SCALED_EXAMPLES = int(os.environ.get("PARAMSCHED_PARITY_EXAMPLES", "200"))

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
SGD2 = {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.0}
ADAM = {"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0}
ADAM2 = {"lr": 3e-4, "betas": [0.85, 0.99], "weight_decay": 0.01}


def _check_case(case: Case, data: st.DataObject) -> None:
    note(case.describe())
    n = case.total_iters
    ts = data.draw(st.lists(st.integers(0, n), max_size=6), label="values_at t")
    bounds = st.tuples(st.integers(0, n), st.integers(1, n + 1))
    windows = [
        (min(a, b - 1), max(a + 1, b))
        for a, b in data.draw(st.lists(bounds, max_size=3), label="values_range windows")
    ]
    assert_engine_matches_mmengine(
        case.param_scheduler,
        case.initial_values,
        case.epoch_length,
        max_epochs=case.max_epochs,
        max_iters=case.max_iters,
        metrics_by_epoch=case.metrics,
        sample_ts=ts,
        windows=windows,
        dtypes=case.dtypes,
    )


@settings(
    max_examples=QUICK_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_HEALTH,
)
@given(case=cases(), data=st.data())
def test_parity_random_jobs(case: Case, data: st.DataObject) -> None:
    _check_case(case, data)


@settings(
    max_examples=max(1, QUICK_EXAMPLES // 3),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_HEALTH,
)
@given(case=cases(adam=True), data=st.data())
def test_parity_random_adam_jobs(case: Case, data: st.DataObject) -> None:
    _check_case(case, data)


@settings(
    max_examples=max(1, SCALED_EXAMPLES),
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=_HEALTH,
)
@given(case=cases(), data=st.data())
def test_parity_random_jobs_scaled(case: Case, data: st.DataObject) -> None:
    _check_case(case, data)


# --------------------------------------------------------------------------- quirks


def _parity(
    param_scheduler: Any,
    initial_values: list[dict[str, Any]],
    epoch_length: int,
    *,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    metrics: dict[int, dict[str, float] | None] | None = None,
) -> list[list[dict[str, float]]]:
    """Parity of the whole curve (plus a few random-access probes); returns MMEngine's."""
    total = max_epochs * epoch_length if max_epochs is not None else int(max_iters or 0)
    oracle = assert_engine_matches_mmengine(
        param_scheduler,
        initial_values,
        epoch_length,
        max_epochs=max_epochs,
        max_iters=max_iters,
        metrics_by_epoch=metrics,
        sample_ts=[total, total // 2, 0, max(0, total - 1), total // 3],
        windows=[(0, total + 1), (total // 2, total + 1)],
    )
    assert oracle.ok, f"MMEngine crashed: {oracle.error!r}"
    return oracle.curves


def _lr(curves: list[list[dict[str, float]]], group: int = 0) -> list[float]:
    return [c[group]["lr"] for c in curves]


def test_cosine_reanchors_on_initial_value_past_t_max() -> None:
    # T_max=4 inside a 14-iteration window: past T_max the recurrence climbs back,
    # and at T_cur = (2k+1) T_max it re-anchors on the *initial* lr (0.1), not on
    # the current one (the warm-up before it changed the current one).
    cfg = [
        dict(type="ConstantLR", factor=0.5, by_epoch=False, begin=0, end=2),
        dict(type="CosineAnnealingLR", T_max=4, eta_min=0.001, by_epoch=False, begin=2),
    ]
    curves = _parity(cfg, [dict(SGD), dict(SGD2)], 4, max_iters=16)
    lrs = _lr(curves)
    assert min(lrs[2:]) < lrs[8] and lrs[9] > lrs[7], "cosine did not climb past T_max"


def test_cosine_eta_min_ratio_uses_initial_value() -> None:
    # The warm-up scales lr by 0.1 first; eta_min = initial_lr * ratio anyway.
    cfg = [
        dict(type="LinearLR", start_factor=0.1, end_factor=0.1, by_epoch=False, end=3),
        dict(type="CosineAnnealingLR", eta_min_ratio=0.5, by_epoch=False, begin=3, T_max=5),
    ]
    curves = _parity(cfg, [dict(SGD), dict(SGD2)], 2, max_iters=9)
    # after T_max steps the cosine lands on eta_min = 0.5 * 0.1 (initial), above
    # the warm-up's 0.01: the "minimum" is above the start.
    assert math.isclose(_lr(curves)[8], 0.05, rel_tol=1e-9)
    assert math.isclose(_lr(curves, 1)[8], 0.01, rel_tol=1e-9)


def test_cosine_restart_uses_initial_value() -> None:
    cfg = [
        dict(type="MultiStepLR", milestones=[1], gamma=0.1, by_epoch=True),
        dict(
            type="CosineRestartLR",
            periods=[3, 4],
            restart_weights=[1.0, 0.5],
            eta_min=0.0,
            by_epoch=False,
            begin=5,
        ),
    ]
    curves = _parity(cfg, [dict(SGD)], 4, max_epochs=3)
    lrs = _lr(curves)
    # the restarts jump to initial_lr * weight whatever MultiStep did before
    assert math.isclose(lrs[4], 0.01, rel_tol=1e-12)
    assert math.isclose(lrs[5], 0.1, rel_tol=1e-12)
    assert math.isclose(lrs[8], 0.05, rel_tol=1e-12)


def test_cosine_restart_eta_min_ratio_and_momentum() -> None:
    cfg = [
        dict(
            type="CosineRestartMomentum",
            periods=[2, 3],
            restart_weights=[1.0, 0.9],
            eta_min_ratio=0.5,
            by_epoch=True,
            convert_to_iter_based=True,
        ),
        dict(type="CosineRestartLR", periods=[5], eta_min_ratio=0.1, by_epoch=False),
    ]
    _parity(cfg, [dict(SGD), dict(SGD2)], 3, max_epochs=6)


def test_onecycle_overwrites_initial_lr_for_later_schedulers() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=2),  # built before
        dict(type="OneCycleLR", eta_max=0.4, by_epoch=False, end=10, div_factor=4.0),
        # built after OneCycle: its initial_lr is eta_max / div_factor = 0.1, not 0.02
        dict(type="CosineAnnealingLR", eta_min_ratio=0.5, by_epoch=False, begin=10, T_max=3),
    ]
    curves = _parity(cfg, [dict(SGD2)], 5, max_iters=15)
    assert math.isclose(_lr(curves)[13], 0.05, rel_tol=1e-9)


def test_onecycle_three_phase_linear_lists() -> None:
    cfg = [
        dict(
            type="OneCycleLR",
            eta_max=[0.3, 0.05],
            total_steps=12,
            pct_start=0.25,
            anneal_strategy="linear",
            three_phase=True,
            final_div_factor=100.0,
            by_epoch=False,
        ),
    ]
    _parity(cfg, [dict(SGD), dict(SGD2)], 4, max_epochs=3)


def test_onecycle_by_epoch_converted() -> None:
    cfg = dict(type="OneCycleLR", eta_max=0.2, convert_to_iter_based=True)
    _parity(cfg, [dict(ADAM)], 5, max_epochs=4)


def test_reduce_on_plateau_best_starts_at_plus_minus_1e9() -> None:
    # rule='less': best starts at +1e9 (not +inf): a loss of 2e9 is never an
    # improvement, so with patience 0 the first validated epoch already reduces.
    less = dict(
        type="ReduceOnPlateauLR",
        monitor="loss",
        patience=0,
        factor=0.5,
        threshold_rule="abs",
        threshold=0.0,
    )
    metrics: dict[int, dict[str, float] | None] = {e: {"loss": 2e9} for e in range(4)}
    lrs = _lr(_parity([less], [dict(SGD)], 2, max_epochs=4, metrics=metrics))
    assert math.isclose(lrs[2], 0.05, rel_tol=1e-12)
    # rule='greater': best starts at -1e9; an accuracy of -2e9 is never better.
    greater = dict(
        type="ReduceOnPlateauLR",
        monitor="acc",
        rule="greater",
        patience=0,
        factor=0.5,
        threshold_rule="abs",
        threshold=0.0,
    )
    metrics = {e: {"acc": -2e9} for e in range(4)}
    lrs = _lr(_parity([greater], [dict(SGD)], 2, max_epochs=4, metrics=metrics))
    assert math.isclose(lrs[2], 0.05, rel_tol=1e-12)


def test_reduce_on_plateau_patience_cooldown_min_value_and_window() -> None:
    cfg = [
        dict(
            type="ReduceOnPlateauLR",
            monitor="loss",
            patience=1,
            cooldown=1,
            factor=0.5,
            min_value=[0.02, 0.015],
            begin=1,
            end=7,
        ),
        dict(
            type="ReduceOnPlateauMomentum",
            monitor="acc",
            rule="greater",
            patience=0,
            factor=0.9,
            threshold=0.1,
            threshold_rule="rel",
        ),
    ]
    metrics: dict[int, dict[str, float] | None] = {
        0: {"loss": 1.0, "acc": 0.5},
        1: {"loss": 1.0, "acc": 0.5},
        2: None,
        3: {"loss": 0.99995, "acc": 0.54},
        4: {"loss": 1.0, "acc": 0.6},
        5: {"loss": 1.0, "acc": 0.2},
        6: {"loss": 1.0, "acc": 0.2},
        7: {"loss": 1.0, "acc": 0.2},
    }
    _parity(cfg, [dict(SGD), dict(SGD2)], 2, max_epochs=8, metrics=metrics)


def test_reduce_on_plateau_last_epoch_outside_default_end() -> None:
    # default end = max_epochs; the metrics of epoch e are judged at _global_step
    # e + 1, so the last epoch's metrics fall outside [begin, end).
    cfg = dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5)
    metrics: dict[int, dict[str, float] | None] = {e: {"loss": 1.0} for e in range(3)}
    lrs = _lr(_parity(cfg, [dict(SGD)], 1, max_epochs=3, metrics=metrics))
    assert [round(v, 6) for v in lrs] == [0.1, 0.1, 0.05, 0.05]


def test_adam_momentum_schedules_betas0() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=5),
        dict(type="CosineAnnealingMomentum", eta_min=0.5, by_epoch=False, begin=2, end=12),
        dict(type="StepMomentum", step_size=1, gamma=0.99, by_epoch=True),
    ]
    curves = _parity(cfg, [dict(ADAM), dict(ADAM2)], 4, max_epochs=3)
    assert curves[0][1]["momentum"] == 0.85
    assert curves[6][0]["momentum"] < 0.9


def test_adam_reduce_on_plateau_momentum() -> None:
    cfg = dict(type="ReduceOnPlateauMomentum", monitor="loss", patience=0, factor=0.5)
    metrics: dict[int, dict[str, float] | None] = {e: {"loss": 1.0} for e in range(4)}
    _parity(cfg, [dict(ADAM), dict(ADAM2)], 2, max_epochs=4, metrics=metrics)


def test_chained_overlapping_schedulers() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.2, by_epoch=False, begin=0, end=8),
        dict(type="ExponentialLR", gamma=0.9, by_epoch=False, begin=3, end=12),
        dict(type="MultiStepLR", milestones=[1, 1, 3], gamma=0.5, by_epoch=True),
        dict(type="PolyLR", eta_min=1e-4, power=2.0, by_epoch=False, begin=5),
        dict(type="ConstantLR", factor=0.5, by_epoch=False, begin=6, end=9),
    ]
    _parity(cfg, [dict(SGD), dict(SGD2), dict(SGD)], 3, max_epochs=5)


def test_gap_between_windows_holds_value() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.5, by_epoch=False, begin=0, end=3),
        dict(type="StepLR", step_size=2, gamma=0.5, by_epoch=False, begin=7, end=15),
    ]
    lrs = _lr(_parity(cfg, [dict(SGD)], 5, max_epochs=4))
    assert lrs[3] == lrs[4] == lrs[7]


def test_epoch_boundary_iteration_schedulers_step_first() -> None:
    # The cosine update is affine (depends on eta_min), MultiStep multiplies:
    # they do not commute, so the order at an epoch end is observable.
    cfg = [
        dict(type="MultiStepLR", milestones=[1, 2], gamma=0.5, by_epoch=True),
        dict(type="CosineAnnealingLR", T_max=6, eta_min=0.05, by_epoch=False),
    ]
    curves = _parity(cfg, [dict(SGD)], 3, max_epochs=3)
    # Plateau decisions come after the epoch schedulers (the min_value clamp and
    # the multiplication do not commute either).
    cfg2 = [
        dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5, min_value=0.04),
        dict(type="MultiStepLR", milestones=[1, 2], gamma=0.5, by_epoch=True),
    ]
    metrics: dict[int, dict[str, float] | None] = {e: {"loss": 1.0} for e in range(3)}
    _parity(cfg2, [dict(SGD)], 2, max_epochs=3, metrics=metrics)
    assert curves


def test_default_end_is_set_before_conversion() -> None:
    # end defaults to max_epochs (=4) before convert_to_iter_based multiplies it.
    cfg = [
        dict(type="CosineAnnealingLR", by_epoch=True, convert_to_iter_based=True),
        dict(type="LinearMomentum", start_factor=0.5, convert_to_iter_based=True, begin=1),
    ]
    _parity(cfg, [dict(SGD)], 3, max_epochs=4)


def test_iter_based_loop_epoch_schedulers_never_step() -> None:
    # IterBasedTrainLoop: no epoch end during training; by_epoch schedulers only
    # apply their construction step (default end = max_epochs = 1).
    cfg = [
        dict(type="ConstantLR", factor=0.5),
        dict(type="MultiStepLR", milestones=[1], gamma=0.1),
        dict(type="CosineAnnealingLR", convert_to_iter_based=True),
        dict(type="PolyMomentum", power=2.0, by_epoch=False),
    ]
    lrs = _lr(_parity(cfg, [dict(SGD)], 4, max_iters=10))
    assert math.isclose(lrs[0], 0.05, rel_tol=1e-12)


def test_generic_param_scheduler_weight_decay_and_momentum() -> None:
    cfg = [
        dict(
            type="LinearParamScheduler",
            param_name="weight_decay",
            start_factor=0.01,
            by_epoch=False,
            end=6,
        ),
        dict(
            type="CosineAnnealingParamScheduler", param_name="momentum", eta_min=0.85, by_epoch=True
        ),
        dict(type="ExponentialParamScheduler", param_name="lr", gamma=0.8),
    ]
    _parity(cfg, [dict(SGD), dict(SGD2)], 3, max_epochs=4)


def test_float_t_max_and_float_window() -> None:
    cfg = [
        dict(type="ConstantLR", factor=1, begin=0, end=4.5),
        dict(type="CosineAnnealingLR", eta_min=0.005, begin=4.5, end=6, T_max=1.5),
    ]
    _parity(cfg, [dict(SGD)], 2, max_epochs=6)


@pytest.mark.parametrize(
    "bad",
    [
        dict(type="LinearLR", start_factor=0.0, by_epoch=False),  # 0/0 at step 1
        dict(type="StepLR", step_size=0),  # modulo by zero
        dict(type="ConstantLR", factor=0.0, by_epoch=False, end=4),  # 1/0 at the end
        dict(type="CosineRestartLR", periods=[2]),  # neither eta_min nor ratio
        dict(type="CosineRestartLR", periods=[2, 3], restart_weights=[1.0], eta_min=0.0),
        dict(type="CosineAnnealingLR", eta_min=0.0, eta_min_ratio=0.1),
        dict(type="ReduceOnPlateauLR", by_epoch=False),
        dict(type="OneCycleLR", eta_max=0.1, total_steps=10, pct_start=0.1, by_epoch=False),
        dict(type="OneCycleLR", eta_max=0.1, total_steps=3, by_epoch=False),  # too short
        dict(type="OneCycleLR", eta_max=0.1, pct_start=1, by_epoch=False),  # int pct
        dict(type="OneCycleParamScheduler", param_name="momentum", eta_max=0.1),
        dict(type="LinearLR", by_epoch=False, convert_to_iter_based=True),
        dict(type="LinearLR", begin=3, end=3),
        dict(type="NoSuchLR"),
    ],
    ids=lambda cfg: str(cfg["type"]),
)
def test_configs_mmengine_crashes_on_are_rejected(bad: dict[str, Any]) -> None:
    cfg = [dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=2), bad]
    oracle = mmengine_curves(cfg, [dict(SGD)], 3, max_epochs=4)
    assert oracle.error is not None, "expected MMEngine to crash on this config"
    assert_engine_matches_mmengine(cfg, [dict(SGD)], 3, max_epochs=4)


def test_missing_monitor_key_is_a_metrics_problem_not_a_config_error() -> None:
    cfg = [dict(type="ReduceOnPlateauLR", monitor="acc", rule="greater", patience=0)]
    metrics: dict[int, dict[str, float] | None] = {0: {"acc": 0.5}, 1: {"loss": 0.3}}
    oracle = assert_engine_matches_mmengine(
        cfg, [dict(SGD)], 2, max_epochs=3, metrics_by_epoch=metrics
    )
    assert oracle.phase == "metrics" and isinstance(oracle.error, KeyError)


def test_values_range_empty_and_single_windows() -> None:
    from paramsched.server.schedules import Timeline, build_job_spec

    cfg = [dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=3)]
    timeline = Timeline(build_job_spec(cfg, [dict(SGD)], epoch_length=2, max_epochs=2))
    full = timeline.values_range(0, 5, {})
    assert len(full) == 5
    for t in range(5):
        assert timeline.values_range(t, t + 1, {}) == [full[t]]
        assert timeline.values_range(t, t, {}) == [], f"values_range({t}, {t}) is not empty"


def test_missing_decision_raises_decision_pending_with_its_epoch() -> None:
    from paramsched.server.schedules import DecisionPending, Timeline, build_job_spec

    cfg = [
        dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=3),
        dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5),
    ]
    metrics: dict[int, dict[str, float] | None] = {0: {"loss": 1.0}, 1: {"loss": 1.0}, 2: None}
    expected = mmengine_curves(cfg, [dict(SGD)], 2, max_epochs=4, metrics_by_epoch=metrics)
    assert expected.ok
    timeline = Timeline(build_job_spec(cfg, [dict(SGD)], epoch_length=2, max_epochs=4))
    partial = {0: metrics[0]}
    for t in range(4):  # up to the last iteration of epoch 1
        assert timeline.values_at(t, partial) == expected.curves[t]
    with pytest.raises(DecisionPending) as info:
        timeline.values_at(4, partial)
    assert info.value.epoch == 1
    # The last epoch's metrics fall outside the default window [0, max_epochs):
    # MMEngine never looks at them, so values after training need no decision for it.
    got = Timeline(build_job_spec(cfg, [dict(SGD)], epoch_length=2, max_epochs=4)).values_at(
        8, dict(metrics)
    )
    assert got == expected.curves[8]


def test_fractional_epoch_window_converted_to_iterations() -> None:
    # convert_to_iter_based truncates begin/end * epoch_length with int().
    cfg = [
        dict(type="LinearLR", start_factor=0.2, end=1.5, convert_to_iter_based=True),
        dict(
            type="CosineAnnealingLR", begin=1.5, T_max=2, eta_min=0.001, convert_to_iter_based=True
        ),
        dict(
            type="StepMomentum",
            step_size=1,
            gamma=0.9,
            begin=0.5,
            end=2.5,
            convert_to_iter_based=True,
        ),
    ]
    _parity(cfg, [dict(SGD)], 3, max_epochs=4)


def test_iter_based_loop_steps_epoch_schedulers_once_after_the_last_iteration() -> None:
    """IterBasedTrainLoop calls after_train_epoch once, after its last iteration: a
    by_epoch scheduler whose window reaches past epoch 0 steps then (and only then)."""
    curves = _parity(
        [dict(type="StepLR", step_size=1, gamma=0.5, end=5),
         dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=3)],
        [SGD], epoch_length=2, max_iters=6,
    )
    lrs = _lr(curves)
    assert lrs[:6] == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.1, 0.1], rel=1e-12)
    assert lrs[6] == pytest.approx(0.05, rel=1e-12)  # after the last iteration: epoch ended


# --------------------------------------------------------------------------- issue 12
# Configs MMEngine trains that paramsched once refused or computed differently; each
# must match MMEngine bit for bit (rejections are not tolerated here).


def _strict(param_scheduler: Any, initial_values: list[dict[str, Any]], epoch_length: int,
            metrics: dict[int, dict[str, float] | None] | None = None,
            **job: Any) -> list[list[dict[str, float]]]:
    total = (job["max_epochs"] * epoch_length if job.get("max_epochs") is not None
             else int(job["max_iters"]))
    oracle = assert_engine_matches_mmengine(
        param_scheduler, initial_values, epoch_length, strict_rejections=True,
        metrics_by_epoch=metrics, sample_ts=[total, 0, total // 2],
        windows=[(0, total + 1)], **job)
    assert oracle.ok, f"MMEngine crashed: {oracle.error!r}"
    return oracle.curves


def test_adam_generic_momentum_writes_the_key_and_betas0_follows_momentum_steps() -> None:
    cfg = [
        dict(type="ConstantMomentum", factor=1.0, by_epoch=False),
        dict(type="ConstantParamScheduler", param_name="momentum", factor=0.5,
             by_epoch=False, end=3),
    ]
    curves = _strict(cfg, [dict(ADAM)], 1, max_iters=4)
    assert [c[0]["momentum"] for c in curves] == [0.9, 0.45, 0.45, 0.9, 0.9]


def test_a_later_momentum_scheduler_resets_the_key_from_betas0() -> None:
    cfg = [
        dict(type="StepMomentum", step_size=2, gamma=0.9, by_epoch=False, end=3),
        dict(type="LinearParamScheduler", param_name="momentum", start_factor=0.5,
             by_epoch=False),
        dict(type="ExponentialMomentum", gamma=0.99, by_epoch=True),
        dict(type="ReduceOnPlateauMomentum", patience=0, factor=0.5, begin=2),
    ]
    metrics: dict[int, dict[str, float] | None] = {0: {"loss": 1.0}, 1: None, 2: {"loss": 2.0},
                                                   3: {"loss": 3.0}}
    _strict(cfg, [dict(ADAM), dict(ADAM2)], 3, max_epochs=4, metrics=metrics)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metrics_monitored_or_not(bad: float) -> None:
    cfg = [dict(type="ReduceOnPlateauLR", patience=0, factor=0.5),
           dict(type="ReduceOnPlateauParamScheduler", param_name="weight_decay",
                monitor="acc", rule="greater", patience=1)]
    metrics: dict[int, dict[str, float] | None] = {
        0: {"loss": bad, "acc": 0.5, "other": bad}, 1: {"loss": 1.0, "acc": bad},
        2: {"loss": bad, "acc": bad}, 3: {"loss": 0.5, "acc": 0.6, "other": math.nan}}
    _strict(cfg, [dict(SGD), dict(SGD2)], 2, max_epochs=4, metrics=metrics)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(type="mmengine.LinearLR", start_factor=0.25),
        dict(type="mmengine.CosineAnnealingParamScheduler", param_name="weight_decay",
             eta_min=0.0, _scope_="mmengine"),
        dict(type="LinearLR", start_factor=0.25, by_epoch=0),
        dict(type="LinearLR", start_factor=0.25, by_epoch=1, convert_to_iter_based=1),
        dict(type="OneCycleLR", eta_max=0.5, by_epoch=0, three_phase=1),
        dict(type="LinearLR", start_factor=0.25, begin=-2, by_epoch=False, end=5),
        dict(type="CosineAnnealingLR", begin=-1.5, end=3, eta_min=0.01),
        dict(type="PolyLR", power=2.0, begin=-3, by_epoch=False),
        dict(type="LinearLR", start_factor=0.5, begin=-1, convert_to_iter_based=True),
        dict(type="MultiStepLR", milestones=[2.0, 3.0]),
        dict(type="MultiStepLR", milestones=[1, 2.5], convert_to_iter_based=True),
        dict(type="StepLR", step_size=2.5, by_epoch=False),
        dict(type="StepLR", step_size=1.0),
        dict(type="StepLR", step_size=0, end=1),
        dict(type="CosineRestartLR", periods=[2.5, 3], restart_weights=[1, 0.5], eta_min=0.0,
             by_epoch=False),
        dict(type="LinearLR", start_factor=0.5, end=math.inf),
        dict(type="CosineAnnealingLR", eta_min=0.01, end=math.inf, by_epoch=False),
        dict(type="OneCycleLR", eta_max=0.5, end=math.inf, by_epoch=False),
        dict(type="PolyLR", power=0.9, by_epoch=False, end=7.5, begin=0.5),
    ],
)
def test_loose_configs_mmengine_trains(cfg: dict[str, Any]) -> None:
    _strict([cfg], [dict(SGD), dict(SGD2)], 4, max_epochs=4)


def test_plateau_float_patience_and_cooldown() -> None:
    cfg = dict(type="ReduceOnPlateauLR", patience=1.5, cooldown=0.5, factor=0.5)
    metrics: dict[int, dict[str, float] | None] = {e: {"loss": 1.0} for e in range(8)}
    _strict(cfg, [dict(SGD)], 1, max_epochs=8, metrics=metrics)


FLOAT32 = [{"lr": "float32"}, {}]


@pytest.mark.parametrize(
    "cfg",
    [
        [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=10),
         dict(type="CosineAnnealingLR", eta_min=1e-5, by_epoch=False, begin=10)],
        [dict(type="CosineAnnealingLR", eta_min_ratio=0.1, T_max=3, by_epoch=False),
         dict(type="PolyLR", power=2.0, eta_min=1e-6, by_epoch=False, begin=12)],
        [dict(type="CosineRestartLR", periods=[5, 10], restart_weights=[1, 0.5],
              eta_min_ratio=0.1, by_epoch=False)],
        [dict(type="ExponentialLR", gamma=0.9, by_epoch=False),
         dict(type="ReduceOnPlateauLR", patience=0, factor=0.5)],
        [dict(type="OneCycleLR", eta_max=0.01, by_epoch=False),
         dict(type="StepLR", step_size=2, by_epoch=False)],
        [dict(type="MultiStepLR", milestones=[3, 6, 6], gamma=0.3, by_epoch=False),
         dict(type="ConstantLR", factor=0.3, by_epoch=False, end=7)],
    ],
)
def test_float32_tensor_lr_chains_in_float32(cfg: list[dict[str, Any]]) -> None:
    """``Adam(lr=torch.tensor(1e-3))``: MMEngine's arithmetic on a float32 tensor rounds
    to float32 after every operation; the float64 group next to it does not."""
    metrics: dict[int, dict[str, float] | None] = {e: {"loss": 1.0} for e in range(3)}
    oracle = assert_engine_matches_mmengine(
        cfg, [dict(ADAM), dict(ADAM2)], 10, max_epochs=3, metrics_by_epoch=metrics,
        dtypes=FLOAT32, strict_rejections=True)
    assert oracle.ok
    spec = build_job_spec(cfg, [dict(ADAM), dict(ADAM2)], epoch_length=10, max_epochs=3,
                          dtypes=FLOAT32)
    got = Timeline(spec).values_range(0, 31, metrics)
    assert [g[0]["lr"] for g in got] == [c[0]["lr"] for c in oracle.curves]  # bit for bit


def test_float32_differs_from_float64_and_survives_a_state_round_trip() -> None:
    cfg = [dict(type="CosineAnnealingLR", eta_min=1e-5, by_epoch=False)]
    f32 = build_job_spec(cfg, [dict(ADAM)], max_iters=30, dtypes=[{"lr": "float32"}])
    f64 = build_job_spec(cfg, [dict(ADAM)], max_iters=30)
    assert f32.to_dict()["dtypes"] == [{"lr": "float32"}]
    a = Timeline(f32).values_range(0, 31)
    assert a != Timeline(f64).values_range(0, 31)
    replayer = Timeline(f32).replayer
    state = replayer.initial.copy()
    replayer.advance(state, 10, {})
    again = ReplayState.from_dict(json.loads(json.dumps(state.to_dict())))
    replayer.advance(again, 30, {})
    assert replayer.group_values(again) == a[30]
