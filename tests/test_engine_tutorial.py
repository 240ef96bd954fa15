"""The configs of MMEngine's parameter-scheduler docs, each checked against MMEngine.

Sources (mmengine, docs/en): ``tutorials/param_scheduler.md`` ("Parameter
Scheduler") and ``migration/param_scheduler.md`` ("Migrate parameter scheduler from
MMCV to MMEngine"); the ReduceOnPlateau example follows the ``ReduceOnPlateauLR`` API
reference. Elided parts of the docs (``dict(...)``, ``num_epochs``, the optimizer)
are filled with small, typical values. Each case runs through the real MMEngine
schedulers (``oracle_mmengine``) and through our engine; the curves must agree at
every iteration to rel 1e-9.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from oracle_mmengine import assert_engine_matches_mmengine, mmengine_curves

SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
ADAM = {"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.05}

Curves = list[list[dict[str, float]]]


def _parity(
    param_scheduler: Any,
    *,
    epoch_length: int,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    groups: list[dict[str, Any]] | None = None,
    metrics: dict[int, dict[str, float] | None] | None = None,
) -> Curves:
    groups = groups or [dict(SGD)]
    total = max_epochs * epoch_length if max_epochs is not None else int(max_iters or 0)
    oracle = assert_engine_matches_mmengine(
        param_scheduler,
        groups,
        epoch_length,
        max_epochs=max_epochs,
        max_iters=max_iters,
        metrics_by_epoch=metrics,
        sample_ts=[total, 0, total // 2, total // 3, total - 1],
        windows=[(total // 4, total // 2 + 1)],
    )
    assert oracle.ok, f"MMEngine crashed: {oracle.error!r}"
    return oracle.curves


def _values(curves: Curves, name: str = "lr", group: int = 0) -> list[float]:
    return [c[group][name] for c in curves]


# ------------------------------------------------------------ tutorials/param_scheduler.md


def test_single_multistep_by_epoch() -> None:
    cfg = dict(type="MultiStepLR", by_epoch=True, milestones=[8, 11], gamma=0.1)
    lrs = _values(_parity(cfg, epoch_length=10, max_epochs=12))
    # "multiplied by 0.1 at the end of the 8 and 11 epoch"
    assert math.isclose(lrs[79], 0.01) and math.isclose(lrs[80], 0.001)
    assert math.isclose(lrs[110], 1e-4)


def test_multistep_by_iteration() -> None:
    cfg = dict(type="MultiStepLR", by_epoch=False, milestones=[600, 800], gamma=0.1)
    lrs = _values(_parity(cfg, epoch_length=100, max_epochs=10))
    assert math.isclose(lrs[599], 0.01) and math.isclose(lrs[600], 0.001)


def test_multistep_by_iteration_in_iter_based_loop() -> None:
    cfg = dict(type="MultiStepLR", by_epoch=False, milestones=[600, 800], gamma=0.1)
    _parity(cfg, epoch_length=250, max_iters=1000)


def test_multistep_convert_to_iter_based() -> None:
    cfg = dict(
        type="MultiStepLR",
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1,
        convert_to_iter_based=True,
    )
    _parity(cfg, epoch_length=7, max_epochs=12)


def test_cosine_by_epoch() -> None:
    cfg = dict(type="CosineAnnealingLR", by_epoch=True, T_max=12)
    lrs = _values(_parity(cfg, epoch_length=5, max_epochs=12))
    assert lrs[0] == lrs[4] != lrs[5]  # only modified after each epoch


def test_cosine_convert_to_iter_based() -> None:
    cfg = dict(type="CosineAnnealingLR", by_epoch=True, T_max=12, convert_to_iter_based=True)
    lrs = _values(_parity(cfg, epoch_length=5, max_epochs=12))
    assert lrs[0] > lrs[1] > lrs[4] > lrs[5]  # changes every iteration


def test_linear_warmup_by_iteration_then_multistep_by_epoch() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=50),
        dict(type="MultiStepLR", by_epoch=True, milestones=[8, 11], gamma=0.1),
    ]
    lrs = _values(_parity(cfg, epoch_length=20, max_epochs=12))
    assert math.isclose(lrs[0], 1e-5) and math.isclose(lrs[50], 0.01)


def test_linear_warmup_then_cosine_by_iteration() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=100),
        dict(type="CosineAnnealingLR", T_max=800, by_epoch=False, begin=100, end=900),
    ]
    lrs = _values(_parity(cfg, epoch_length=100, max_iters=1000))
    assert lrs[900] == lrs[999] and lrs[900] < 1e-6  # held after the cosine window


def test_momentum_scheduler_with_lr_scheduler() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=100),
        dict(type="LinearMomentum", start_factor=0.001, by_epoch=False, begin=0, end=1000),
    ]
    curves = _parity(cfg, epoch_length=200, max_epochs=6)
    assert math.isclose(_values(curves, "momentum")[0], 0.0009)


def test_momentum_scheduler_with_adam_betas() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=100),
        dict(type="LinearMomentum", start_factor=0.5, by_epoch=False, begin=0, end=1000),
    ]
    _parity(cfg, epoch_length=200, max_epochs=6, groups=[dict(ADAM)])


def test_generic_param_scheduler_on_lr_equals_linear_lr() -> None:
    generic = [
        dict(
            type="LinearParamScheduler",
            param_name="lr",
            start_factor=0.001,
            by_epoch=False,
            begin=0,
            end=1000,
        ),
    ]
    linear = [dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=1000)]
    a = _parity(generic, epoch_length=100, max_iters=1200)
    b = _parity(linear, epoch_length=100, max_iters=1200)
    assert a == b


def test_generic_param_scheduler_on_weight_decay() -> None:
    cfg = [
        dict(
            type="LinearParamScheduler",
            param_name="weight_decay",
            start_factor=0.001,
            by_epoch=False,
            begin=0,
            end=1000,
        ),
    ]
    curves = _parity(cfg, epoch_length=100, max_epochs=12)
    assert math.isclose(_values(curves, "weight_decay")[0], 1e-7)


# ------------------------------------------------------------ migration/param_scheduler.md

MAIN = dict(type="MultiStepLR", by_epoch=True, milestones=[8, 11], gamma=0.1)


@pytest.mark.parametrize(
    "warmup",
    [
        dict(type="ConstantLR", factor=0.1, begin=0, end=500, by_epoch=False),
        dict(type="LinearLR", start_factor=0.1, begin=0, end=500, by_epoch=False),
        dict(type="ExponentialLR", gamma=0.1, begin=0, end=500, by_epoch=False),
    ],
    ids=["constant", "linear", "exp"],
)
def test_warmup_migration(warmup: dict[str, Any]) -> None:
    _parity([warmup, dict(MAIN)], epoch_length=100, max_epochs=12)


def test_fixed_lr() -> None:
    lrs = _values(_parity([dict(type="ConstantLR", factor=1)], epoch_length=3, max_epochs=5))
    assert set(lrs) == {0.01}


def test_step_migration_as_documented_is_rejected() -> None:
    # The doc spells the key `milestone`; MMEngine raises TypeError (unexpected
    # keyword), so our engine must reject the config.
    cfg = [dict(type="MultiStepLR", milestone=[8, 11], gamma=0.1, by_epoch=True)]
    oracle = mmengine_curves(cfg, [dict(SGD)], 4, max_epochs=12)
    assert isinstance(oracle.error, TypeError)
    assert_engine_matches_mmengine(cfg, [dict(SGD)], 4, max_epochs=12)


def test_step_migration() -> None:
    cfg = [dict(type="MultiStepLR", milestones=[8, 11], gamma=0.1, by_epoch=True)]
    _parity(cfg, epoch_length=4, max_epochs=12)


def test_poly_migration() -> None:
    num_epochs = 12
    cfg = [dict(type="PolyLR", power=0.7, eta_min=0.001, begin=0, end=num_epochs, by_epoch=True)]
    _parity(cfg, epoch_length=4, max_epochs=num_epochs)


def test_exp_migration() -> None:
    num_epochs = 12
    cfg = [dict(type="ExponentialLR", gamma=0.5, begin=0, end=num_epochs, by_epoch=True)]
    _parity(cfg, epoch_length=4, max_epochs=num_epochs)


def test_cosine_annealing_migration() -> None:
    num_epochs = 12
    cfg = [
        dict(
            type="CosineAnnealingLR",
            eta_min=0.5,
            T_max=num_epochs,
            begin=0,
            end=num_epochs,
            by_epoch=True,
        )
    ]
    _parity(cfg, epoch_length=4, max_epochs=num_epochs, groups=[dict(SGD, lr=1.0)])


def test_flat_cosine_migration_whole_epochs() -> None:
    num_epochs = 12  # num_epochs * 0.75 = 9.0 and num_epochs * 0.25 = 3.0 are floats
    cfg = [
        dict(type="ConstantLR", factor=1, begin=0, end=num_epochs * 0.75),
        dict(
            type="CosineAnnealingLR",
            eta_min=0.005,
            begin=num_epochs * 0.75,
            end=num_epochs,
            T_max=num_epochs * 0.25,
            by_epoch=True,
        ),
    ]
    _parity(cfg, epoch_length=4, max_epochs=num_epochs)


def test_flat_cosine_migration_fractional_epochs() -> None:
    # With num_epochs=10 the documented config has begin/end 7.5 and T_max 2.5;
    # MMEngine runs it (the window test `begin <= step < end` works on floats).
    num_epochs = 10
    cfg = [
        dict(type="ConstantLR", factor=1, begin=0, end=num_epochs * 0.75),
        dict(
            type="CosineAnnealingLR",
            eta_min=0.005,
            begin=num_epochs * 0.75,
            end=num_epochs,
            T_max=num_epochs * 0.25,
            by_epoch=True,
        ),
    ]
    _parity(cfg, epoch_length=4, max_epochs=num_epochs)


def test_cosine_restart_migration() -> None:
    cfg = [
        dict(
            type="CosineRestartLR",
            periods=[5, 10, 15],
            restart_weights=[1, 0.7, 0.3],
            eta_min=0.001,
            by_epoch=True,
        )
    ]
    _parity(cfg, epoch_length=3, max_epochs=32)


def test_one_cycle_migration_as_documented() -> None:
    cfg = [
        dict(
            type="OneCycleLR",
            eta_max=0.02,
            total_steps=90000,
            pct_start=0.3,
            anneal_strategy="cos",
            div_factor=25,
            final_div_factor=1e4,
            three_phase=True,
            by_epoch=False,
        )
    ]
    # a short run of the documented 90000-step cycle
    _parity(cfg, epoch_length=500, max_iters=3000)


def test_one_cycle_migration_full_cycle() -> None:
    cfg = [
        dict(
            type="OneCycleLR",
            eta_max=0.02,
            total_steps=900,
            pct_start=0.3,
            anneal_strategy="cos",
            div_factor=25,
            final_div_factor=1e4,
            three_phase=True,
            by_epoch=False,
        )
    ]
    lrs = _values(_parity(cfg, epoch_length=100, max_iters=900))
    assert math.isclose(lrs[0], 0.02 / 25) and math.isclose(max(lrs), 0.02)


def test_linear_annealing_migration() -> None:
    num_epochs = 12
    cfg = [
        dict(
            type="LinearLR", start_factor=1, end_factor=0.01, begin=0, end=num_epochs, by_epoch=True
        )
    ]
    _parity(cfg, epoch_length=4, max_epochs=num_epochs)


def test_momentum_migration() -> None:
    num_epochs = 12
    cfg = [
        dict(type="CosineAnnealingLR", T_max=num_epochs, by_epoch=True),
        dict(
            type="CosineAnnealingMomentum",
            eta_min=0.1,
            T_max=num_epochs,
            begin=0,
            end=num_epochs,
            by_epoch=True,
        ),
    ]
    _parity(cfg, epoch_length=4, max_epochs=num_epochs)


def test_update_frequency_migration() -> None:
    num_epochs = 12
    cfg = [
        dict(
            type="CosineAnnealingLR",
            eta_min=0.5,
            T_max=num_epochs,
            by_epoch=True,
            convert_to_iter_based=True,
        )
    ]
    _parity(cfg, epoch_length=4, max_epochs=num_epochs, groups=[dict(SGD, lr=1.0)])


# ------------------------------------------------------------ ReduceOnPlateauLR API reference


def test_reduce_on_plateau_with_monitor() -> None:
    cfg = [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=20),
        dict(
            type="ReduceOnPlateauLR",
            monitor="loss",
            rule="less",
            factor=0.1,
            patience=2,
            threshold=1e-4,
            threshold_rule="rel",
            cooldown=1,
            min_value=1e-5,
        ),
    ]
    losses = [1.0, 0.8, 0.8, 0.8, 0.8, 0.79999, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    metrics: dict[int, dict[str, float] | None] = {
        e: {"loss": v, "acc": 0.5} for e, v in enumerate(losses)
    }
    metrics[6] = None  # no validation that epoch
    lrs = _values(_parity(cfg, epoch_length=10, max_epochs=12, metrics=metrics))
    assert min(lrs) < 0.01 * 0.1 + 1e-12  # it did reduce


def test_reduce_on_plateau_greater_rule_for_accuracy() -> None:
    cfg = [
        dict(
            type="ReduceOnPlateauLR",
            monitor="acc",
            rule="greater",
            factor=0.5,
            patience=1,
            threshold=0.01,
            threshold_rule="abs",
        )
    ]
    accs = [0.3, 0.5, 0.505, 0.51, 0.52, 0.52, 0.52, 0.6]
    metrics: dict[int, dict[str, float] | None] = {e: {"acc": v} for e, v in enumerate(accs)}
    _parity(cfg, epoch_length=3, max_epochs=8, metrics=metrics)
