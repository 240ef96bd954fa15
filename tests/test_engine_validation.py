"""Every config MMEngine rejects or crashes on is a ConfigError naming index, type, field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from paramsched.server.schedules import (
    ConfigError,
    JobSpec,
    ScheduleArithmeticError,
    Timeline,
    build_job_spec,
)

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


# -- issue 12: refusals name index, type and field; loose inputs MMEngine trains pass --
def test_poly_complex_value_is_refused_up_front_for_lr():
    # T = end - begin - 1 = 2.5: at step 3 the base 1 - 1/(T-k+1) is -1; (-1)**0.9 is complex
    msg = rejected([dict(type="PolyLR", power=0.9, by_epoch=True, end=3.5)], "power",
                   epoch_length=1, max_epochs=4)
    assert "complex" in msg


def test_poly_complex_value_is_refused_for_a_custom_key_too():
    """Decided: MMEngine trains on (a custom key silently holds a complex number), but a
    paramsched value is a real number, so the config is refused, naming ``power``."""
    groups = [{"lr": 0.1, "foo": 1.0}]
    rejected([dict(type="PolyParamScheduler", param_name="foo", power=0.5, by_epoch=False,
                   end=2.5)], "power", groups=groups, max_iters=4)


def test_poly_fractional_window_is_fine_when_the_complex_step_is_never_reached():
    spec = build([dict(type="PolyLR", power=0.9, by_epoch=True, end=3.5)], epoch_length=1,
                 max_epochs=2)
    assert len(Timeline(spec).values_range(0, 3)) == 3


def test_poly_integer_power_of_a_negative_base_is_real():
    build([dict(type="PolyLR", power=2.0, by_epoch=True, end=3.5)], epoch_length=1,
          max_epochs=4)


def test_step_size_zero_is_fine_when_the_window_holds_one_step():
    spec = build([dict(type="StepLR", step_size=0, end=1)], epoch_length=1, max_epochs=4)
    assert [v[0]["lr"] for v in Timeline(spec).values_range(0, 5)] == [0.1] * 5


def test_infinite_end_cannot_be_converted_to_iterations():
    msg = rejected([dict(type="LinearLR", end=math.inf, convert_to_iter_based=True)], "end")
    assert "OverflowError" in msg


def test_infinite_end_is_no_end():
    spec = build([dict(type="ExponentialLR", gamma=0.5, end=math.inf)], max_epochs=3)
    assert [v[0]["lr"] for v in Timeline(spec).values_range(0, 31, {})][-1] == 0.1 * 0.5**3


@pytest.mark.parametrize(("key", "bad"), [("begin", math.nan), ("begin", -math.inf),
                                          ("end", math.nan), ("end", -math.inf),
                                          ("begin", math.inf)])
def test_non_finite_window_other_than_infinite_end(key: str, bad: float):
    rejected([dict(type="ConstantLR", **{key: bad})], key)


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        (dict(type="mmdet.LinearLR"), "type"),  # a scope mmengine-lite does not know
        (dict(type="mmengine.WarmupStableDecayLR"), "type"),  # paramsched's own type
        (dict(type="LinearLR", by_epoch=[1]), "by_epoch"),
        (dict(type="OneCycleLR", eta_max=0.1, total_steps=4.0), "total_steps"),
    ],
)
def test_refusals_of_what_mmengine_refuses(cfg: dict[str, Any], field: str):
    rejected([cfg], field)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(type="mmengine.StepLR", step_size=2),
        dict(type="LinearLR", by_epoch=0, end=4),
        dict(type="LinearLR", by_epoch=1.0, verbose=0),
        dict(type="MultiStepLR", milestones=[1.0, 2.5]),
        dict(type="StepLR", step_size=2.5),
        dict(type="ReduceOnPlateauLR", patience=1.5, cooldown=0.5),
        dict(type="CosineRestartLR", periods=[2.5], eta_min=0.0),
        dict(type="ConstantLR", begin=-3),
    ],
)
def test_loose_inputs_mmengine_trains_are_accepted(cfg: dict[str, Any]):
    build([cfg])


def test_run_time_arithmetic_failure_names_index_type_and_field():
    # gamma**2 overflows at the milestone listed twice: MMEngine crashes there too.
    spec = build([dict(type="LinearLR", by_epoch=False, end=2),
                  dict(type="MultiStepLR", milestones=[2, 2], gamma=1e200)])
    with pytest.raises(ScheduleArithmeticError) as info:
        Timeline(spec).values_range(0, 51)
    err = info.value
    assert err.field == "param_scheduler[1].gamma" and err.index == 1
    assert "MultiStepLR" in str(err) and "'gamma'" in str(err)


def test_non_finite_metrics_are_metrics_like_any_other():
    spec = build([dict(type="ReduceOnPlateauLR", patience=0)])
    timeline = Timeline(spec)
    for metrics in ({"loss": math.nan}, {"loss": math.inf, "other": -math.inf},
                    {"loss": 1.0, "unmonitored": math.nan}):
        timeline.check_metrics(0, metrics)
    # NaN is never better: with patience 0 it reduces; read again from the store (a new
    # NaN object), the same decision is still the same decision.
    first = timeline.values_range(0, 21, {0: {"loss": math.nan}, 1: {"loss": 1.0}})
    again = timeline.values_range(0, 21, {0: {"loss": float("nan")}, 1: {"loss": 1.0}})
    assert first == again and first[10][0]["lr"] < first[0][0]["lr"]


@pytest.mark.parametrize(("dtypes", "field"), [
    ([{"lr": "float16"}], "dtypes[0].lr"),
    ([{"nope": "float32"}], "dtypes[0].nope"),
    ([{"betas": "float32"}], "dtypes[0].betas"),
    ([{}, {}], "dtypes"),
    ("float32", "dtypes"),
])
def test_dtypes_are_checked(dtypes: Any, field: str):
    with pytest.raises(ConfigError) as info:
        build_job_spec([dict(type="ConstantLR")], ADAM, epoch_length=2, max_epochs=2,
                       dtypes=dtypes)
    assert info.value.field == field
