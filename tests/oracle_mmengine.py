"""Reference curves from the real MMEngine schedulers (the parity oracle).

The oracle builds a real torch optimizer over tiny tensors, builds the schedulers the
way ``Runner._build_param_scheduler`` does and drives them the way
``EpochBasedTrainLoop`` / ``IterBasedTrainLoop`` + ``ParamSchedulerHook`` do:

* construction of each scheduler (in list order) is its step 0;
* for every training iteration ``t`` the values of every param group are recorded
  *before* ``optimizer.step()`` (what the step of iteration ``t`` sees), then
  ``optimizer.step()`` runs and every ``by_epoch=False`` scheduler steps, in list order
  (``ParamSchedulerHook.after_train_iter``);
* at each epoch end of an epoch-based loop every ``by_epoch=True`` scheduler steps in
  list order (``after_train_epoch``; ReduceOnPlateau only counts), then, if the epoch
  was validated, every ``by_epoch`` scheduler with ``need_val_args`` gets
  ``step(metrics)`` in list order (``after_val_epoch``);
* an iter-based loop has no epoch end during training, but calls ``after_train_epoch``
  once after its last iteration (so ``by_epoch`` schedulers step once, at the end);
* index ``max_iters`` holds the values after the last iteration (and, for epoch-based
  loops, after the last epoch end and its validation).

MMEngine's ``Runner`` itself is not used (it drags in cv2); this module mirrors the
relevant lines of ``runner/runner.py``, ``runner/loops.py`` and
``hooks/param_scheduler_hook.py`` of mmengine 0.10.7.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mmengine.optim.scheduler  # noqa: F401  (registers every scheduler type)
import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import PARAM_SCHEDULERS

GroupValues = dict[str, float]
Curves = list[list[GroupValues]]

#: exceptions a bad config makes MMEngine raise while building or stepping.
CRASH_TYPES: tuple[type[BaseException], ...] = (
    AssertionError,
    ZeroDivisionError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    OverflowError,
)


@dataclass
class OracleResult:
    """What MMEngine did with one job.

    ``curves[t][g]`` maps every scheduled param name to the value param group ``g``
    holds while iteration ``t`` runs (``t`` in ``[0, max_iters]``). When MMEngine
    crashed, ``error`` is the exception, ``phase`` says where (``"build"``: building
    scheduler ``error_index``; ``"step"``: a scheduler step that does not depend on
    metrics; ``"metrics"``: a ``step(metrics)`` of ReduceOnPlateau), ``error_at`` the
    iteration (``"step"``) or epoch (``"metrics"``) at which it happened, and
    ``curves`` holds the values recorded before the crash.
    """

    curves: Curves
    param_names: list[str]
    max_iters: int
    error: BaseException | None = None
    phase: str | None = None
    error_index: int | None = None
    error_at: int | None = None
    scheduler_types: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _is_adam_style(initial_values: Sequence[Mapping[str, Any]]) -> bool:
    return any("betas" in group for group in initial_values)


def build_optimizer(
    initial_values: Sequence[Mapping[str, Any]],
    dtypes: Sequence[Mapping[str, str]] | None = None,
) -> torch.optim.Optimizer:
    """A real SGD (momentum) or Adam (betas) optimizer, one tiny tensor per group.

    The first group's settings double as the optimizer defaults. ``dtypes[g][key] ==
    "float32"`` makes that value a 0-dim float32 tensor (``lr=torch.tensor(1e-3)``).
    """
    if not initial_values:
        raise ValueError("need at least one param group")
    groups: list[dict[str, Any]] = []
    for settings in initial_values:
        group: dict[str, Any] = {"params": [torch.nn.Parameter(torch.zeros(2))]}
        for key, value in settings.items():
            group[key] = tuple(value) if key == "betas" else value
            if dtypes and dtypes[len(groups)].get(key) == "float32":
                group[key] = torch.tensor(value, dtype=torch.float32)
        groups.append(group)
    defaults = {k: v for k, v in groups[0].items() if k != "params"}
    if _is_adam_style(initial_values):
        return torch.optim.Adam(groups, **defaults)
    defaults.setdefault("momentum", 0.0)
    return torch.optim.SGD(groups, **defaults)


def _read(group: Mapping[str, Any], name: str, use_betas: bool) -> float:
    if name == "momentum" and use_betas:
        return float(group["betas"][0])
    return float(group[name])


def _snapshot(
    groups: Sequence[Mapping[str, Any]], names: Sequence[str], use_betas: bool
) -> list[GroupValues]:
    return [{name: _read(group, name, use_betas) for name in names} for group in groups]


def mmengine_curves(
    param_scheduler: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    initial_values: Sequence[Mapping[str, Any]],
    epoch_length: int,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    metrics_by_epoch: Mapping[int, Mapping[str, float] | None] | None = None,
    *,
    use_optim_wrapper: bool = False,
    dtypes: Sequence[Mapping[str, str]] | None = None,
) -> OracleResult:
    """Run MMEngine's schedulers for one job and record every iteration's values.

    ``initial_values`` is one dict per param group (``{"lr", "momentum",
    "weight_decay"}`` for SGD, ``{"lr", "betas", "weight_decay"}`` for Adam).
    Exactly one of ``max_epochs`` (epoch-based loop) / ``max_iters`` (iter-based
    loop) is given. ``metrics_by_epoch[e]`` is epoch ``e``'s validation metrics or
    ``None`` (not validated); it is ignored for iter-based loops.

    ``use_optim_wrapper=True`` hands the schedulers an ``OptimWrapper`` as the Runner
    does (with several param groups it shows the schedulers one extra "base" group);
    the default hands them the bare optimizer, whose groups are the real ones.
    """
    if (max_epochs is None) == (max_iters is None):
        raise ValueError("give exactly one of max_epochs / max_iters")
    epoch_based = max_epochs is not None
    if epoch_based:
        assert max_epochs is not None
        loop_max_epochs = int(max_epochs)
        loop_max_iters = loop_max_epochs * epoch_length
    else:
        assert max_iters is not None
        loop_max_epochs = 1  # IterBasedTrainLoop: "for compatibility"
        loop_max_iters = int(max_iters)
    metrics_by_epoch = metrics_by_epoch or {}

    cfgs: list[Any] = (
        [param_scheduler] if isinstance(param_scheduler, Mapping) else list(param_scheduler)
    )
    optimizer = build_optimizer(initial_values, dtypes)
    target: Any = OptimWrapper(optimizer) if use_optim_wrapper else optimizer
    real_groups = optimizer.param_groups
    result = OracleResult(curves=[], param_names=[], max_iters=loop_max_iters)
    result.scheduler_types = [
        str(c.get("type")) if isinstance(c, Mapping) else type(c).__name__ for c in cfgs
    ]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Runner._build_param_scheduler
        schedulers: list[Any] = []
        for index, cfg in enumerate(cfgs):
            try:
                if not isinstance(cfg, Mapping):
                    raise TypeError(f"scheduler should be a dict, but got {cfg!r}")
                _cfg = copy.deepcopy(dict(cfg))
                default_end = loop_max_epochs if _cfg.get("by_epoch", True) else loop_max_iters
                _cfg.setdefault("end", default_end)
                schedulers.append(
                    PARAM_SCHEDULERS.build(
                        _cfg,
                        default_args=dict(optimizer=target, epoch_length=epoch_length),
                    )
                )
            except CRASH_TYPES as exc:
                result.error, result.phase, result.error_index = exc, "build", index
                return result

        use_betas = any(getattr(s, "use_betas", False) for s in schedulers)
        names: list[str] = []
        for s in schedulers:
            if s.param_name not in names:
                names.append(s.param_name)
        result.param_names = names
        iter_scheds = [s for s in schedulers if not s.by_epoch]
        epoch_scheds = [s for s in schedulers if s.by_epoch]
        val_scheds = [s for s in epoch_scheds if getattr(s, "need_val_args", False)]

        def record() -> None:
            result.curves.append(_snapshot(real_groups, names, use_betas))

        t = 0
        try:
            for t in range(loop_max_iters):
                record()
                target.step()  # no gradients: only the step counter moves
                for s in iter_scheds:  # after_train_iter
                    s.step()
                if not epoch_based and t + 1 == loop_max_iters:
                    # IterBasedTrainLoop calls after_train_epoch once, after the loop.
                    for s in epoch_scheds:
                        s.step()
                if epoch_based and (t + 1) % epoch_length == 0:
                    for s in epoch_scheds:  # after_train_epoch
                        s.step()
                    epoch = t // epoch_length
                    metrics = metrics_by_epoch.get(epoch)
                    if metrics is not None:  # after_val_epoch
                        try:
                            for s in val_scheds:
                                s.step(dict(metrics))
                        except CRASH_TYPES as exc:
                            result.error, result.phase, result.error_at = exc, "metrics", epoch
                            return result
            record()
        except CRASH_TYPES as exc:
            result.error, result.phase, result.error_at = exc, "step", t
        return result


# --------------------------------------------------------------------------- parity check

REL_TOL = 1e-9
ABS_TOL = 1e-12


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _describe_job(
    param_scheduler: Any,
    initial_values: Any,
    epoch_length: int,
    max_epochs: int | None,
    max_iters: int | None,
    metrics: Any,
) -> str:
    return (
        f"\nparam_scheduler={param_scheduler!r}\ninitial_values={initial_values!r}\n"
        f"epoch_length={epoch_length} max_epochs={max_epochs} max_iters={max_iters}\n"
        f"metrics={metrics!r}"
    )


def first_mismatch(
    expected: Sequence[Sequence[Mapping[str, float]]],
    actual: Sequence[Sequence[Mapping[str, float]]],
    names: Sequence[str],
    start: int = 0,
) -> str | None:
    """Describe the first ``(t, group, name)`` where ``actual`` differs from ``expected``."""
    if len(expected) != len(actual):
        return f"length differs: expected {len(expected)} iterations, got {len(actual)}"
    for offset, (exp_t, act_t) in enumerate(zip(expected, actual, strict=True)):
        t = start + offset
        if len(exp_t) != len(act_t):
            return f"t={t}: expected {len(exp_t)} param groups, got {len(act_t)}"
        for g, (exp_g, act_g) in enumerate(zip(exp_t, act_t, strict=True)):
            for name in names:
                if name not in act_g:
                    return f"t={t} group={g}: {name!r} missing from {act_g!r}"
                if not _close(float(exp_g[name]), float(act_g[name])):
                    return (
                        f"t={t} group={g} {name}: MMEngine {exp_g[name]!r}, engine {act_g[name]!r}"
                    )
    return None


def _crashes_in_longer_run(
    param_scheduler: Any,
    initial_values: Sequence[Mapping[str, Any]],
    epoch_length: int,
    max_epochs: int | None,
    max_iters: int | None,
    index: int | None,
    dtypes: Sequence[Mapping[str, str]] | None = None,
) -> bool:
    """Whether MMEngine crashes (not on metrics) on these settings in a longer loop.

    Tried: the same config in longer epoch-based loops; then scheduler ``index``
    alone with its ``end`` dropped (so its window reaches the crashing step), except
    for OneCycle whose ``total_steps`` check depends on the window itself.
    """
    total = max_epochs * epoch_length if max_epochs is not None else int(max_iters or 0)
    epochs = -(-total // epoch_length)
    cfgs = [param_scheduler] if isinstance(param_scheduler, Mapping) else list(param_scheduler)
    probes: list[list[Any]] = [cfgs]
    if index is not None and 0 <= index < len(cfgs) and isinstance(cfgs[index], Mapping):
        alone = {k: v for k, v in cfgs[index].items() if k != "end"}
        if "OneCycle" not in str(alone.get("type")):
            probes.append([alone])
    for probe in probes:
        for extra in (1, 2, 4, 8):
            longer = mmengine_curves(probe, initial_values, epoch_length,
                                     max_epochs=epochs + extra, dtypes=dtypes)
            if longer.error is not None and longer.phase in ("build", "step"):
                return True
    return False


def _has_nan(curves: Curves) -> bool:
    return any(v != v for step in curves for group in step for v in group.values())


def assert_engine_matches_mmengine(
    param_scheduler: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    initial_values: Sequence[Mapping[str, Any]],
    epoch_length: int,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    metrics_by_epoch: Mapping[int, Mapping[str, float] | None] | None = None,
    *,
    sample_ts: Sequence[int] = (),
    windows: Sequence[tuple[int, int]] = (),
    strict_rejections: bool | None = None,
    keyframe_intervals: Sequence[int] = (1, 3),
    dtypes: Sequence[Mapping[str, str]] | None = None,
    semantics: int | None = None,
) -> OracleResult:
    """Differential check of ``paramsched.server.schedules`` against MMEngine.

    * MMEngine crashes building or stepping (independently of metrics): our
      ``build_job_spec`` must raise ``ConfigError`` naming a scheduler of the list.
    * MMEngine crashes on the metrics (e.g. the monitored key is missing): only the
      values before that epoch end are compared.
    * Otherwise every iteration ``0..max_iters`` of every group and scheduled param
      must agree (rel 1e-9); ``values_at(t)`` for ``sample_ts`` (asked first, in the
      given order, on a fresh ``Timeline``) and ``values_range`` over ``windows``
      must agree with the full curve too.

    A ``ConfigError`` for a config MMEngine runs without crashing fails the check,
    unless ``strict_rejections`` is false (the default; ``PARAMSCHED_PARITY_STRICT=1``
    turns it on) and MMEngine does crash on the same config in a longer loop (e.g.
    ``StepLR(step_size=0)`` in a one-epoch job never reaches the modulo by zero).
    """
    import pytest

    from paramsched.server.schedules import ConfigError, Timeline, build_job_spec

    if strict_rejections is None:
        strict_rejections = os.environ.get("PARAMSCHED_PARITY_STRICT", "") not in ("", "0")

    oracle = mmengine_curves(
        param_scheduler, initial_values, epoch_length, max_epochs, max_iters, metrics_by_epoch,
        dtypes=dtypes,
    )
    job = _describe_job(
        param_scheduler, initial_values, epoch_length, max_epochs, max_iters, metrics_by_epoch
    )
    loop: dict[str, int] = (
        {"max_epochs": max_epochs} if max_epochs is not None else {"max_iters": int(max_iters or 0)}
    )
    cfgs = [param_scheduler] if isinstance(param_scheduler, Mapping) else list(param_scheduler)

    def build() -> Any:
        return build_job_spec(
            copy.deepcopy(param_scheduler),
            copy.deepcopy([dict(g) for g in initial_values]),
            epoch_length=epoch_length,
            **loop,
            dtypes=copy.deepcopy(dtypes),
            semantics=semantics,
        )

    if oracle.error is not None and oracle.phase in ("build", "step"):
        try:
            build()
        except ConfigError as exc:
            index = getattr(exc, "index", None)
            assert index is not None and 0 <= index < len(cfgs), (
                f"ConfigError does not name a scheduler: {exc}{job}"
            )
            assert f"param_scheduler[{index}]" in str(exc), f"{exc}{job}"
            cfg_type = cfgs[index].get("type") if isinstance(cfgs[index], Mapping) else None
            assert str(cfg_type) in str(exc), f"message lacks the type {cfg_type}: {exc}{job}"
            return oracle
        doing = "building" if oracle.phase == "build" else "stepping"
        pytest.fail(
            f"MMEngine raised {oracle.error!r} while {doing}"
            f" (scheduler {oracle.error_index}, iteration {oracle.error_at}) but "
            f"build_job_spec accepted the config{job}"
        )

    try:
        spec = build()
    except ConfigError as exc:
        if _has_nan(oracle.curves):
            # MMEngine goes on with a NaN value (no training can use it): refusing the
            # config up front is what paramsched does for these.
            return oracle
        if not strict_rejections and _crashes_in_longer_run(
            param_scheduler,
            initial_values,
            epoch_length,
            max_epochs,
            max_iters,
            getattr(exc, "index", None),
            dtypes,
        ):
            # The config is broken (MMEngine crashes on it once the loop is long
            # enough to reach the bad step); rejecting it up front is tolerated.
            return oracle
        pytest.fail(f"engine rejected a config MMEngine runs: {exc}{job}")

    decisions: dict[int, Any] = {}
    if max_epochs is not None:
        given = metrics_by_epoch or {}
        for e in range(max_epochs):
            m = given.get(e)
            decisions[e] = dict(m) if m is not None else None
    names = oracle.param_names
    expected = oracle.curves
    n_expected = len(expected)  # max_iters + 1 unless the metrics made MMEngine crash
    if oracle.error is not None:  # metrics-dependent crash: compare the prefix only
        assert oracle.error_at is not None
        decisions = {e: d for e, d in decisions.items() if e < oracle.error_at}
        got = Timeline(spec).values_range(0, n_expected, decisions)
        problem = first_mismatch(expected, got, names)
        assert problem is None, f"{problem}{job}"
        return oracle

    fresh = Timeline(spec)
    for t in sample_ts:
        got_t = fresh.values_at(t, decisions)
        problem = first_mismatch([expected[t]], [got_t], names, start=t)
        assert problem is None, f"values_at: {problem}{job}"

    # Random access through keyframes: a dense keyframe grid, asked out of order.
    if "keyframe_interval" in inspect.signature(Timeline).parameters:
        for interval in keyframe_intervals:
            framed = Timeline(spec, keyframe_interval=interval)
            order = [*sample_ts, *range(n_expected - 1, -1, -max(1, n_expected // 7))]
            for t in order:
                got_t = framed.values_at(t, decisions)
                problem = first_mismatch([expected[t]], [got_t], names, start=t)
                assert problem is None, f"values_at (keyframes every {interval}): {problem}{job}"

    timeline = Timeline(spec)
    got = timeline.values_range(0, n_expected, decisions)
    problem = first_mismatch(expected, got, names)
    assert problem is None, f"values_range: {problem}{job}"
    for start, stop in windows:
        part = timeline.values_range(start, stop, decisions)
        problem = first_mismatch(expected[start:stop], part, names, start=start)
        assert problem is None, f"values_range({start}, {stop}): {problem}{job}"
    return oracle
