"""Every config MMEngine rejects or crashes on is a ConfigError naming index, type, field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from paramsched.server.schedules import ConfigError, JobSpec, Timeline, build_job_spec

SGD = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}]
ADAM = [{"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0}]
PLAIN = [{"lr": 0.1}]


def build(cfg: Any, groups: Any = SGD, **job: Any) -> JobSpec:
    job.setdefault("epoch_length", 10)
    if "max_iters" not in job:
        job.setdefault("max_epochs", 5)
    return build_job_spec(cfg, groups, **job)


def rejected(cfg: Any, field: str, *, index: int = 0, groups: Any = SGD, **job: Any) -> str:
    with pytest.raises(ConfigError) as info:
        build(cfg, groups, **job)
    err = info.value
    message = str(err)
    assert err.field == (f"param_scheduler[{index}].{field}" if field else err.field)
    assert f"param_scheduler[{index}]" in message
    if isinstance(cfg, list) and isinstance(cfg[index], dict) and "type" in cfg[index]:
        assert str(cfg[index]["type"]) in message
    assert f"'{field}'" in message
    return message


# -- crashes in MMEngine (ZeroDivisionError, modulo by zero, AssertionError) ----------
def test_linear_start_factor_zero_divides_by_zero():
    msg = rejected([dict(type="LinearLR", start_factor=0, by_epoch=False, end=5)], "start_factor")
    assert "ZeroDivisionError" in msg


def test_linear_start_factor_zero_is_fine_when_window_has_one_step():
    # MMEngine never reaches the division: only step 0 happens inside [0, 1).
    spec = build([dict(type="LinearLR", start_factor=0.0, by_epoch=False, end=1)])
    assert Timeline(spec).values_at(0)[0]["lr"] == 0.0


def test_step_size_zero_is_modulo_by_zero():
    rejected([dict(type="StepLR", step_size=0)], "step_size")


def test_constant_factor_zero_divides_at_window_end():
    rejected([dict(type="ConstantLR", factor=0, end=3)], "factor")


def test_poly_negative_power_divides_by_zero_at_last_step():
    rejected([dict(type="PolyLR", power=-1.0, by_epoch=False, end=20)], "power")


def test_onecycle_total_steps_smaller_than_window():
    msg = rejected(
        [dict(type="OneCycleLR", eta_max=0.1, total_steps=10, by_epoch=False)], "total_steps"
    )
    assert "Tried to step" in msg


def test_onecycle_empty_phase_divides_by_zero():
    # pct_start * total_steps == 1 makes the first phase end at step 0.
    rejected(
        [
            dict(
                type="OneCycleLR",
                eta_max=0.1,
                total_steps=10,
                pct_start=0.1,
                by_epoch=False,
                end=10,
            )
        ],
        "pct_start",
    )


def test_onecycle_pct_start_must_be_float():
    rejected([dict(type="OneCycleLR", eta_max=0.1, pct_start=1)], "pct_start")


def test_onecycle_div_factor_zero():
    rejected([dict(type="OneCycleLR", eta_max=0.1, div_factor=0)], "div_factor")


def test_onecycle_only_for_lr():
    rejected(
        [dict(type="OneCycleParamScheduler", param_name="weight_decay", eta_max=0.1)], "param_name"
    )


def test_both_eta_min_and_ratio():
    rejected(
        [dict(type="CosineAnnealingLR", T_max=5, eta_min=0.0, eta_min_ratio=0.1)], "eta_min_ratio"
    )


def test_cosine_restart_needs_eta_min_or_ratio():
    rejected([dict(type="CosineRestartLR", periods=[2, 3], restart_weights=[1, 0.5])], "eta_min")


def test_cosine_restart_weights_length():
    rejected(
        [dict(type="CosineRestartLR", periods=[2, 3], restart_weights=[1], eta_min=0.0)],
        "restart_weights",
    )


def test_plateau_by_epoch_false():
    rejected([dict(type="ReduceOnPlateauLR", by_epoch=False)], "by_epoch")


def test_plateau_cannot_be_converted():
    rejected([dict(type="ReduceOnPlateauLR", convert_to_iter_based=True)], "convert_to_iter_based")


def test_convert_requires_by_epoch():
    rejected(
        [dict(type="CosineAnnealingLR", by_epoch=False, convert_to_iter_based=True)],
        "convert_to_iter_based",
    )


# -- MMEngine's own checks -----------------------------------------------------------
@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        (dict(type="LinearLR", start_factor=1.5), "start_factor"),
        (dict(type="LinearLR", end_factor=-0.1), "end_factor"),
        (dict(type="ConstantLR", factor=2), "factor"),
        (dict(type="ReduceOnPlateauLR", factor=1.0), "factor"),
        (dict(type="ReduceOnPlateauLR", threshold=-1), "threshold"),
        (dict(type="ReduceOnPlateauLR", rule="lower"), "rule"),
        (dict(type="ReduceOnPlateauLR", threshold_rule="relative"), "threshold_rule"),
        (dict(type="ReduceOnPlateauLR", min_value=[0.1, 0.2]), "min_value"),
        (dict(type="OneCycleLR", eta_max=[0.1, 0.2]), "eta_max"),
        (dict(type="OneCycleLR", anneal_strategy="cosine"), "anneal_strategy"),
        (dict(type="OneCycleLR", total_steps=0), "total_steps"),
    ],
)
def test_mmengine_value_checks(cfg: dict[str, Any], field: str):
    rejected([cfg], field)


def test_end_must_be_after_begin():
    msg = rejected([dict(type="ConstantLR", begin=3, end=3)], "end")
    assert "begin=3, end=3" in msg


def test_conversion_that_collapses_the_window_is_rejected():
    rejected(
        [dict(type="ConstantLR", begin=0.1, end=0.15, convert_to_iter_based=True)],
        "end",
        epoch_length=5,
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers(bad: float):
    rejected([dict(type="ExponentialLR", gamma=bad)], "gamma")


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        (dict(type="StepLR", step_size="3"), "step_size"),
        (dict(type="StepLR", step_size=2.5), "step_size"),
        (dict(type="StepLR", step_size=True), "step_size"),
        (dict(type="MultiStepLR", milestones=3), "milestones"),
        (dict(type="MultiStepLR", milestones=[1, "2"]), "milestones"),
        (dict(type="LinearLR", by_epoch="yes"), "by_epoch"),
        (dict(type="ExponentialLR", gamma=None), "gamma"),
        (dict(type="ConstantLR", begin="1"), "begin"),
    ],
)
def test_wrong_types(cfg: dict[str, Any], field: str):
    rejected([cfg], field)


def test_missing_required_argument():
    msg = rejected([dict(type="StepLR")], "step_size")
    assert "required" in msg


def test_misspelled_argument_suggests_the_right_one():
    msg = rejected([dict(type="LinearLR", start_facter=0.1)], "start_facter")
    assert "start_factor" in msg


def test_unknown_type_suggests_a_close_one():
    with pytest.raises(ConfigError) as info:
        build([dict(type="CosineAnealingLR")])
    assert info.value.field == "param_scheduler[0].type"
    assert "CosineAnnealingLR" in str(info.value)


def test_index_points_at_the_bad_scheduler():
    rejected(
        [dict(type="LinearLR", by_epoch=False, end=5), dict(type="StepLR", step_size=0)],
        "step_size",
        index=1,
    )


def test_momentum_scheduler_needs_momentum_or_betas():
    rejected([dict(type="StepMomentum", step_size=2)], "type", groups=PLAIN)


def test_generic_scheduler_needs_existing_param():
    rejected([dict(type="StepParamScheduler", param_name="dampening", step_size=2)], "param_name")


def test_generic_scheduler_needs_param_name():
    rejected([dict(type="StepParamScheduler", step_size=2)], "param_name")


def test_lr_scheduler_does_not_take_param_name():
    rejected([dict(type="StepLR", param_name="lr", step_size=2)], "param_name")


def test_resume_by_last_step_is_refused():
    rejected([dict(type="StepLR", step_size=2, last_step=3)], "last_step")


def test_plateau_in_an_iteration_based_job_gets_no_decisions():
    """IterBasedTrainLoop has no epoch ends during training: without validation
    ReduceOnPlateau never reduces, and no value waits for a decision."""
    spec = build([dict(type="ReduceOnPlateauLR", patience=0),
                  dict(type="LinearLR", by_epoch=False, end=10)], max_iters=100)
    timeline = Timeline(spec)
    assert not timeline.needs_decision(0)
    assert len(timeline.values_range(0, 101)) == 101


# -- job-level fields ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("job", "field"),
    [
        (dict(epoch_length=10), "max_iters"),
        (dict(epoch_length=10, max_epochs=2, max_iters=20), "max_epochs"),
        (dict(epoch_length=0, max_epochs=2), "epoch_length"),
        (dict(max_epochs=2), "epoch_length"),
        (dict(epoch_length=10, max_epochs=-1), "max_epochs"),
        (dict(epoch_length=10, max_iters=2.5), "max_iters"),
    ],
)
def test_job_fields(job: dict[str, Any], field: str):
    with pytest.raises(ConfigError) as info:
        build_job_spec([dict(type="ConstantLR")], SGD, **job)
    assert info.value.field == field
    assert f"'{field}'" in str(info.value)


@pytest.mark.parametrize(
    ("groups", "field"),
    [
        ([], "initial_values"),
        ([{"lr": "0.1"}], "initial_values[0].lr"),
        ([{"lr": math.nan}], "initial_values[0].lr"),
        ([{"lr": 0.1, "betas": [0.9]}], "initial_values[0].betas"),
        ([{"lr": 0.1}, 3], "initial_values[1]"),
    ],
)
def test_initial_values(groups: Any, field: str):
    with pytest.raises(ConfigError) as info:
        build_job_spec([dict(type="ConstantLR")], groups, epoch_length=2, max_epochs=2)
    assert info.value.field == field


def test_single_dict_is_a_list_of_one():
    one = build(dict(type="StepLR", step_size=2))
    listed = build([dict(type="StepLR", step_size=2)])
    assert one.to_dict() == listed.to_dict()


def test_spec_round_trips_through_plain_data():
    spec = build(
        [
            dict(type="LinearLR", by_epoch=False, end=5),
            dict(type="CosineAnnealingMomentum", T_max=3, eta_min_ratio=0.1),
        ],
        ADAM,
    )
    again = JobSpec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    assert Timeline(again).values_range(0, 51) == Timeline(spec).values_range(0, 51)
    assert spec.momentum_via_betas
