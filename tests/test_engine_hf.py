"""The engine's HF schedule types equal ``transformers.get_scheduler``, bit for bit.

For every ``lr_scheduler_type`` the integration serves and random warm-up, length,
kwargs and param-group lrs, the engine's values at every step ``0..num_training_steps``
are those a real torch ``LambdaLR`` built by ``get_scheduler`` puts into the optimizer
(compared with ``==``, not a tolerance). The configs come from the integration's own
``hf_param_scheduler``, so the mapping from ``TrainingArguments`` is covered too.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from transformers import get_scheduler

from paramsched.integrations.transformers import hf_param_scheduler
from paramsched.server.schedules import ConfigError, Timeline, build_job_spec

EXAMPLES = 25
HYPOTHESIS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])

fraction = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
cycles = st.floats(min_value=0.05, max_value=4.0, allow_nan=False)
shape = st.sampled_from(["linear", "cosine", "1-sqrt"])


@st.composite
def kwargs_for(draw: Any, name: str, lr: float, training: int) -> dict[str, Any]:
    """Random ``lr_scheduler_kwargs`` that HF accepts for ``name``."""
    out: dict[str, Any] = {}
    maybe = draw(st.booleans())
    if name in ("cosine", "cosine_with_restarts") and maybe:
        out["num_cycles"] = draw(cycles) if name == "cosine" else draw(st.integers(1, 5))
    elif name == "polynomial":
        out["lr_end"] = draw(st.floats(min_value=0.0, max_value=lr * 0.99))
        out["power"] = draw(st.sampled_from([0.5, 1.0, 2.0, 3.7]))
    elif name == "inverse_sqrt" and maybe:
        out["timescale"] = draw(st.integers(1, 50))
    elif name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        if draw(st.booleans()):
            out["min_lr"] = draw(st.floats(min_value=0.0, max_value=lr))
        else:
            out["min_lr_rate"] = draw(fraction)
        if maybe:
            out["num_cycles"] = draw(cycles)
        if name == "cosine_warmup_with_min_lr" and draw(st.booleans()):
            out["warmup_lr_rate"] = draw(fraction)
    elif name == "warmup_stable_decay":
        out["num_decay_steps"] = draw(st.integers(0, training))
        out["warmup_type"] = draw(shape)
        out["decay_type"] = draw(shape)
        out["min_lr_ratio"] = draw(fraction)
        if maybe:
            out["num_stable_steps"] = draw(st.integers(0, training))
        out["num_cycles"] = draw(cycles)
    return out


def reference(name: str, lrs: list[float], warmup: int, training: int,
              kwargs: dict[str, Any], extra: int = 0) -> list[list[float]]:
    """The lr of every group while each step 0..training+extra runs, from a real LambdaLR."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, lrs,
                                                                            strict=True)],
                                  lr=lrs[0])
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup,
                              num_training_steps=training,
                              scheduler_specific_kwargs=dict(kwargs))
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler.step() without optimizer.step()
        for _ in range(training + extra + 1):
            out.append([g["lr"] for g in optimizer.param_groups])
            scheduler.step()
    return out


def served(name: str, lrs: list[float], warmup: int, training: int,
           kwargs: dict[str, Any], extra: int = 0) -> list[list[float]]:
    """The engine's values; ``extra`` steps past ``num_training_steps`` (a longer job)."""
    config = hf_param_scheduler(name, num_warmup_steps=warmup, num_training_steps=training,
                                lr_scheduler_kwargs=kwargs, default_lr=lrs[0])
    if extra:
        config = [dict(c, end=training + extra + 1) for c in config]
    spec = build_job_spec(config, [{"lr": lr, "weight_decay": 0.01} for lr in lrs],
                          max_iters=training + extra)
    rows = Timeline(spec).values_range(0, training + extra + 1)
    return [[g["lr"] for g in row] for row in rows]


HF_TYPES = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
            "constant_with_warmup", "inverse_sqrt", "cosine_with_min_lr",
            "cosine_warmup_with_min_lr", "warmup_stable_decay"]


@pytest.mark.parametrize("name", HF_TYPES)
@HYPOTHESIS
@given(data=st.data())
def test_every_step_equals_get_scheduler_bit_for_bit(name: str, data: Any) -> None:
    training = data.draw(st.integers(1, 60), label="num_training_steps")
    warmup = data.draw(st.integers(0, training if name != "polynomial" else training - 1),
                       label="num_warmup_steps")
    lrs = data.draw(st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=1,
                             max_size=3), label="lrs")
    kwargs = data.draw(kwargs_for(name, lrs[0], training), label="kwargs")
    config = hf_param_scheduler(name, num_warmup_steps=warmup, num_training_steps=training,
                                lr_scheduler_kwargs=kwargs, default_lr=lrs[0])
    note(f"config: {config}")
    # Past num_training_steps too (the lambdas' tails: 0, lr_end, a held ratio, ...).
    extra = data.draw(st.sampled_from([0, 0, 1, 7]), label="steps past the end")
    assert served(name, lrs, warmup, training, kwargs, extra) == reference(
        name, lrs, warmup, training, kwargs, extra)


def test_linear_ends_at_exactly_zero() -> None:
    values = served("linear", [3e-4], 3, 10, {})
    assert values[0] == [0.0] and values[3] == [3e-4] and values[10] == [0.0]


def test_polynomial_past_the_end_holds_lr_end_ratio() -> None:
    spec = build_job_spec([dict(type="HFPolynomialLR", by_epoch=False, num_warmup_steps=0,
                                num_training_steps=4, lr_init=0.5, lr_end=0.1)],
                          [{"lr": 0.5}], max_iters=8)
    values = [row[0]["lr"] for row in Timeline(spec).values_range(0, 9)]
    assert values[4:] == [0.5 * (0.1 / 0.5)] * 5


def test_a_later_begin_starts_the_lambda_at_step_zero() -> None:
    spec = build_job_spec([dict(type="HFLinearLR", by_epoch=False, begin=5,
                                num_warmup_steps=2, num_training_steps=4)],
                          [{"lr": 1.0}], max_iters=12)
    values = [row[0]["lr"] for row in Timeline(spec).values_range(0, 10)]
    # held at the initial lr before the window, then HF's lambda from k = 0
    assert values == [1.0] * 5 + [0.0, 0.5, 1.0, 0.5, 0.0]


def test_convert_to_iter_based_scales_the_step_counts() -> None:
    spec = build_job_spec([dict(type="HFLinearLR", convert_to_iter_based=True,
                                num_warmup_steps=1, num_training_steps=2)],
                          [{"lr": 1.0}], epoch_length=2, max_epochs=2)
    values = [row[0]["lr"] for row in Timeline(spec).values_range(0, 4)]
    assert values == [0.0, 0.5, 1.0, 0.5]


@pytest.mark.parametrize(("cfg", "field", "words"), [
    (dict(type="HFPolynomialLR", num_warmup_steps=0, num_training_steps=10),
     "lr_init", "is required"),
    (dict(type="HFPolynomialLR", lr_init=0.1, lr_end=0.1, num_training_steps=10),
     "lr_end", "smaller than lr_init"),
    (dict(type="HFPolynomialLR", lr_init=0.1, num_warmup_steps=10, num_training_steps=10,
          end=11),
     "num_warmup_steps", "divides by zero"),
    (dict(type="HFPolynomialLR", lr_init=0.1, power=-1.0, num_training_steps=10, end=11),
     "power", "divides by zero"),
    (dict(type="HFCosineWithMinLRLR", num_training_steps=10), "min_lr_rate", "is required"),
    (dict(type="HFInverseSqrtLR", timescale=0), "timescale", "> 0"),
    (dict(type="HFLinearLR", num_warmup_steps=-1), "num_warmup_steps", ">= 0"),
    (dict(type="HFLinearLR", num_warmup_steps=1.5), "num_warmup_steps", "integer"),
    (dict(type="HFCosineLR", num_cycle=2), "num_cycle", "did you mean 'num_cycles'"),
    (dict(type="HFLinearLR", end=10**9), "num_training_steps", "is required"),
    (dict(type="HFWarmupStableDecayLR", num_training_steps=10), "num_decay_steps",
     "is required"),
    (dict(type="HFWarmupStableDecayLR", num_decay_steps=1, decay_type="exp"),
     "decay_type", "exp"),
    (dict(type="mmengine.HFLinearLR"), "type", "unknown scheduler type"),
    (dict(type="HFLinearMomentum"), "type", "unknown scheduler type"),
])
def test_bad_configs_name_index_type_and_field(cfg: dict[str, Any], field: str,
                                                words: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_job_spec([dict(type="ConstantLR", factor=1.0), dict(cfg, by_epoch=False)],
                       [{"lr": 0.1, "momentum": 0.9}], max_iters=10)
    error = info.value
    assert error.index == 1 and error.field == f"param_scheduler[1].{field}", str(error)
    assert cfg["type"] in str(error) and words in str(error), str(error)


def test_the_generic_family_drives_any_param_group_key() -> None:
    spec = build_job_spec([dict(type="HFLinearParamScheduler", param_name="weight_decay",
                                by_epoch=False, end=3, num_training_steps=2)],
                          [{"lr": 0.1, "weight_decay": 0.2}], max_iters=2)
    assert [row[0]["weight_decay"] for row in Timeline(spec).values_range(0, 3)] == [
        0.2, 0.2 * 0.5, 0.0]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"num_cycles": 2}, "lr_scheduler_kwargs.num_cycles"),  # linear takes none
])
def test_mapping_refuses_kwargs_the_schedule_does_not_take(kwargs: dict[str, Any],
                                                           field: str) -> None:
    with pytest.raises(ValueError, match=field):
        hf_param_scheduler("linear", num_warmup_steps=0, num_training_steps=5,
                           lr_scheduler_kwargs=kwargs, default_lr=0.1)


def test_mapping_names_unserved_types_and_min_lr_conflicts() -> None:
    with pytest.raises(ValueError, match="lr_scheduler_type: 'greedy'"):
        hf_param_scheduler("greedy", num_warmup_steps=0, num_training_steps=5,
                           default_lr=0.1)
    with pytest.raises(ValueError, match=r"lr_scheduler_kwargs\.min_lr: give min_lr or"):
        hf_param_scheduler("cosine_with_min_lr", num_warmup_steps=0, num_training_steps=5,
                           lr_scheduler_kwargs={"min_lr": 0.0, "min_lr_rate": 0.1},
                           default_lr=0.1)
    with pytest.raises(ValueError, match=r"lr_scheduler_kwargs\.cooldow"):
        hf_param_scheduler("reduce_lr_on_plateau", num_warmup_steps=0, num_training_steps=5,
                           lr_scheduler_kwargs={"factor": 0.5, "cooldow": 1},
                           default_lr=0.1)


def test_reduce_lr_on_plateau_maps_torch_keywords_to_the_engine() -> None:
    config = hf_param_scheduler("reduce_lr_on_plateau", num_warmup_steps=3,
                                num_training_steps=5, default_lr=0.1, monitor="eval_acc",
                                lr_scheduler_kwargs={"mode": "max", "min_lr": 1e-4,
                                                     "threshold_mode": "abs", "patience": 0})
    assert config == [{"type": "ReduceOnPlateauLR", "monitor": "eval_acc", "rule": "greater",
                       "min_value": 1e-4, "threshold_rule": "abs", "patience": 0}]


def test_a_zero_length_decay_that_training_never_reaches_is_accepted() -> None:
    # k = num_training_steps (the 0/0 step) lies past the job: HF never computes it either
    build_job_spec([dict(type="HFPolynomialLR", by_epoch=False, lr_init=0.1,
                         num_warmup_steps=10, num_training_steps=10)],
                   [{"lr": 0.1}], max_iters=10)
