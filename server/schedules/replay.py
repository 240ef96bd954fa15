"""Replaying a job's schedulers the way MMEngine's Runner and ParamSchedulerHook do.

Order of events, which is the whole of MMEngine's timing semantics:

1. Build: each scheduler in list order; building a scheduler is its step 0 (a
   ReduceOnPlateau scheduler does not step when built). The first scheduler of a
   param records ``initial_<param>``; OneCycle overwrites ``initial_lr`` first.
2. After every iteration: every ``by_epoch=False`` scheduler steps, in list order.
3. After the last iteration of an epoch: every ``by_epoch=True`` scheduler steps, in
   list order (ReduceOnPlateau only counts the epoch), then every ReduceOnPlateau
   scheduler steps with that epoch's validation metrics, if given. An iteration-based
   job (IterBasedTrainLoop) has one epoch, ending after its last iteration.
4. An iteration-based job with ``val_interval`` validates inside that one epoch: after
   iterations ``val_interval``, ``2 * val_interval``, ... and after the last one, the
   iteration schedulers step (2.), then every ReduceOnPlateau steps with that
   validation's metrics, if given (MMEngine's ``IterBasedTrainLoop`` runs its val loop
   between ``after_train_iter`` and, at the very end, ``after_train_epoch``). A plateau's
   global step counts epoch ends only, so it is 0 at every one of these checks: its
   window must hold 0 (the default ``begin=0``) for it to act.

A scheduler's step increments its global step; only inside ``[begin, end)`` does it
increment ``last_step`` (``k``) and apply its rule.

The values in force while iteration ``t`` runs are those after building and after
the events that follow iterations ``0..t-1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import JobSpec, SchedulerSpec
from .errors import DecisionPending, MetricsError, ScheduleArithmeticError
from .float32 import F32
from .rules import PlateauRule

#: Adam-style jobs of semantics 2 hold ``betas[0]`` apart from the ``momentum`` key; it is
#: the value the optimizer uses, so it is what a job hands out as ``momentum``.
BETA0 = "betas[0]"

#: The field a run-time arithmetic failure is blamed on, per kind.
MAIN_FIELD = {
    "Constant": "factor", "Linear": "start_factor", "Exponential": "gamma", "Step": "gamma",
    "MultiStep": "gamma", "CosineAnnealing": "T_max", "Poly": "power",
    "CosineRestart": "periods", "OneCycle": "eta_max", "WarmupStableDecay": "min_ratio",
    "ReduceOnPlateau": "factor",
}

Metrics = Mapping[str, float]
Decisions = Mapping[int, Metrics | None]


@dataclass
class ReplayState:
    """Everything that changes while a job trains; plain data (see ``to_dict``)."""

    iteration: int
    values: dict[str, list[float]]  # param -> value per group
    last_step: list[int]  # per scheduler: steps taken inside its window - 1
    global_step: list[int]  # per scheduler: steps taken in all
    plateau: dict[int, list[float]]  # scheduler position -> [best, num_bad_epochs, cooldown]

    def copy(self) -> ReplayState:
        return ReplayState(
            self.iteration,
            {k: list(v) for k, v in self.values.items()},
            list(self.last_step),
            list(self.global_step),
            {k: list(v) for k, v in self.plateau.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; values held as float32 tensors are listed under ``float32``."""
        data = {
            "iteration": self.iteration,
            "values": {k: [float(x) for x in v] for k, v in self.values.items()},
            "last_step": list(self.last_step),
            "global_step": list(self.global_step),
            "plateau": {str(k): list(v) for k, v in self.plateau.items()},
        }
        float32 = {k: [isinstance(x, F32) for x in v] for k, v in self.values.items()
                   if any(isinstance(x, F32) for x in v)}
        if float32:
            data["float32"] = float32
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplayState:
        float32 = data.get("float32") or {}
        values = {}
        for k, v in data["values"].items():
            flags = float32.get(k) or [False] * len(v)
            values[k] = [F32(x) if f else x for x, f in zip(v, flags, strict=True)]
        return cls(
            int(data["iteration"]),
            values,
            list(data["last_step"]),
            list(data["global_step"]),
            {int(k): list(v) for k, v in data["plateau"].items()},
        )


class Replayer:
    """Builds a job's schedulers and advances a ``ReplayState`` one event at a time."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.scheds = spec.schedulers
        self.iter_idx = [i for i, s in enumerate(self.scheds) if not s.by_epoch]
        self.epoch_idx = [i for i, s in enumerate(self.scheds) if s.by_epoch]
        self.plateau_idx = [i for i, s in enumerate(self.scheds) if s.is_plateau]
        # Validation points inside an iteration-based loop (only plateaus read them).
        self.val_interval = (spec.val_interval if self.plateau_idx and not spec.epoch_based
                             else None)
        # Semantics 2, Adam-style: the ``momentum`` key and betas[0] are two values; every
        # step of a Momentum scheduler (inside its window or not) copies the key into
        # betas[0]; building one first resets the key from betas[0] (MMEngine's mixin).
        self.split_betas = spec.momentum_via_betas and spec.semantics >= 2
        self.syncs = [self.split_betas and s.param == "momentum" and not s.generic
                      for s in self.scheds]
        self.iter_syncs = any(self.syncs[i] for i in self.iter_idx)
        self._steppers: list[tuple[Any, Any, str, Any, list[float], bool]] = []
        self._building = 0
        try:
            self.initial = self._build()
        except ScheduleArithmeticError:
            raise
        except (ArithmeticError, ValueError, TypeError) as exc:  # building = every step 0
            raise self._failure(0, self.scheds[self._building], exc) from exc

    @staticmethod
    def _failure(iteration: int, s: SchedulerSpec, exc: BaseException) -> ScheduleArithmeticError:
        return ScheduleArithmeticError(iteration, exc, index=s.index, scheduler_type=s.type,
                                       field=MAIN_FIELD.get(s.kind, "type"))

    def _build(self) -> ReplayState:
        spec = self.spec
        values: dict[str, list[float]] = {}
        for param in spec.params:
            if param == "momentum" and spec.momentum_via_betas:
                values[param] = [g["betas"][0] for g in spec.initial_values]
            else:
                values[param] = [g[param] for g in spec.initial_values]
        if self.split_betas and "momentum" in values:
            values[BETA0] = list(values["momentum"])
        for g, names in enumerate(spec.float32):
            for name in names:
                if name in values:
                    values[name][g] = F32(values[name][g])
        n = len(self.scheds)
        state = ReplayState(0, values, [-1] * n, [-1] * n, {})
        extras: list[dict[str, float]] = [{} for _ in spec.initial_values]
        self.extras = extras  # OneCycle reads the live dicts during building, then final ones
        self.base: list[list[float]] = []
        for i, s in enumerate(self.scheds):
            self._building = i
            if self.syncs[i]:
                values["momentum"] = list(values[BETA0])
            if hasattr(s.rule, "construction_extras"):
                for group, written in zip(extras, s.rule.construction_extras(), strict=True):
                    group.update(written)
            key = f"initial_{s.param}"
            for gi, group in enumerate(extras):
                group.setdefault(key, values[s.param][gi])
            self.base.append([group[key] for group in extras])
            next_values = None if isinstance(s.rule, PlateauRule) else s.rule.next_values
            self._steppers.append(
                (s.begin, s.end, s.param, next_values, self.base[i], self.syncs[i]))
            if isinstance(s.rule, PlateauRule):
                state.global_step[i] = 0
                state.plateau[i] = [s.rule.worst, 0, 0]
            else:
                self._step(state, i)
        return state

    def _step(self, state: ReplayState, i: int) -> None:
        # The hottest loop of the server: everything it needs is precomputed per scheduler.
        begin, end, param, next_values, base, sync = self._steppers[i]
        g = state.global_step[i] + 1
        state.global_step[i] = g
        if begin <= g < end and next_values is not None:
            k = state.last_step[i] + 1
            state.last_step[i] = k
            try:
                new = next_values(state.values[param], base, self.extras, k)
            except (ArithmeticError, ValueError, TypeError) as exc:
                raise self._failure(state.iteration, self.scheds[i], exc) from exc
            state.values[param] = new
        if sync:
            state.values[BETA0] = list(state.values["momentum"])

    # -- epoch ends and validation decisions ------------------------------------------
    def active_plateaus(self, epoch: int) -> list[int]:
        """Plateau schedulers whose window holds the check of decision ``epoch`` (the
        epoch's end; in a job with val_interval, that validation point)."""
        # A plateau's global step is 0 when built and counts epoch ends, so the check
        # after epoch e happens at global step e + 1; the checks inside the one epoch of
        # an iteration-based loop all happen at global step 0.
        if not self.spec.epoch_based and self.val_interval is None:
            return []  # no validation points: nothing is ever decided (no val loop)
        step = epoch + 1 if self.spec.epoch_based else 0
        return [
            i for i in self.plateau_idx
            if self.scheds[i].begin <= step < self.scheds[i].end
        ]

    def deciding_plateaus(self, epoch: int) -> list[int]:
        """Plateau schedulers whose step after ``epoch``'s validation changes values: the
        active ones, and (semantics 2, Adam-style) every ReduceOnPlateauMomentum, whose
        ``step(metrics)`` copies the ``momentum`` key into betas[0] even outside its
        window, so the values depend on whether the epoch was validated."""
        active = self.active_plateaus(epoch)
        if not self.split_betas or (not self.spec.epoch_based and self.val_interval is None):
            return active
        return [i for i in self.plateau_idx if i in active or self.syncs[i]]

    def check_metrics(self, epoch: int, metrics: Metrics | None) -> None:
        """Raise MetricsError if ``metrics`` cannot serve as ``epoch``'s decision."""
        if metrics is None:
            return
        if not isinstance(metrics, Mapping):
            raise MetricsError("must be a mapping of metric name to number")
        # NaN and +-inf are metrics like any other (a diverged validation loss): NaN is
        # never better than the best, as in MMEngine's comparisons.
        for name, value in metrics.items():
            if not isinstance(name, str) or isinstance(value, bool) or not isinstance(
                value, int | float
            ):
                raise MetricsError(f"{name!r} must be a number, got {value!r}",
                                   field=f"metrics.{name}")
        for i in self.active_plateaus(epoch):
            rule = self.scheds[i].rule
            assert isinstance(rule, PlateauRule)
            if rule.monitor not in metrics:
                raise MetricsError(
                    f"ReduceOnPlateau param_scheduler[{self.scheds[i].index}] monitors "
                    f"{rule.monitor!r}, which is missing (got {sorted(metrics)})",
                    field=f"metrics.{rule.monitor}")

    def advance(self, state: ReplayState, stop: int, decisions: Decisions) -> None:
        """Move ``state`` to iteration ``stop`` (DecisionPending leaves it consistent).

        Arithmetic that fails (a math domain error, an overflow in ``**``) raises
        ScheduleArithmeticError: MMEngine would crash at that step too.
        """
        self._advance(state, stop, decisions)

    def _advance(self, state: ReplayState, stop: int, decisions: Decisions) -> None:
        length = self.spec.epoch_length or 0
        epoch_based = self.spec.epoch_based
        last = self.spec.max_iters - 1
        iter_idx = self.iter_idx
        val = self.val_interval
        while state.iteration < stop:
            i = state.iteration
            # An iteration-based loop (IterBasedTrainLoop) has one epoch, which ends after
            # its last iteration: by_epoch schedulers step once, at the very end.
            ends_epoch = (i + 1) % length == 0 if epoch_based else i == last
            validates = val is not None and ((i + 1) % val == 0 or i == last)
            if not ends_epoch and not validates and iter_idx:
                if epoch_based:
                    event = (i // length + 1) * length - 1
                else:  # the next validation point, or the end
                    event = last if val is None else min(last, (i // val + 1) * val - 1)
                quiet = self._quiet_iterations(state, stop, event)
                if quiet:
                    for j in iter_idx:
                        state.global_step[j] += quiet
                    if self.iter_syncs:  # the first quiet step copies momentum to betas[0]
                        state.values[BETA0] = list(state.values["momentum"])
                    state.iteration += quiet
                    continue
            metrics: Metrics | None = None
            key = None
            if ends_epoch and epoch_based:
                key = (i + 1) // length - 1
            elif validates and val is not None:
                key = -(-(i + 1) // val) - 1  # the last point may end a shorter interval
            if key is not None and self.plateau_idx and self.deciding_plateaus(key):
                if key not in decisions:
                    raise DecisionPending(key, i + 1)
                metrics = decisions[key]
            for j in iter_idx:
                self._step(state, j)
            if validates and metrics is not None:  # inside the loop's one epoch
                self._validate(state, metrics)
            if ends_epoch:
                for j in self.epoch_idx:
                    self._step(state, j)
                if epoch_based and metrics is not None:
                    self._validate(state, metrics)
            state.iteration = i + 1

    def _quiet_iterations(self, state: ReplayState, stop: int, event: int) -> int:
        """How many iterations from now change nothing but the iteration schedulers'
        global steps (all outside their windows, no epoch end or validation point among
        them: ``event`` is the next iteration that has one)."""
        i = state.iteration
        horizon = min(stop - i, event - i)
        for j in self.iter_idx:
            s = self.scheds[j]
            nxt = state.global_step[j] + 1
            if s.begin <= nxt < s.end:
                return 0
            if nxt < s.begin:
                horizon = min(horizon, math.ceil(s.begin) - nxt)
        return max(horizon, 0)

    def _validate(self, state: ReplayState, metrics: Metrics) -> None:
        for i in self.plateau_idx:
            s = self.scheds[i]
            rule = s.rule
            assert isinstance(rule, PlateauRule)
            if s.begin <= state.global_step[i] < s.end:
                state.last_step[i] += 1
                try:
                    reduced = rule.decide(state.values[s.param], state.plateau[i],
                                          metrics[rule.monitor])
                except (ArithmeticError, ValueError, TypeError) as exc:
                    raise self._failure(state.iteration, s, exc) from exc
                if reduced is not None:
                    state.values[s.param] = reduced
            if self.syncs[i]:
                state.values[BETA0] = list(state.values["momentum"])

    def group_values(self, state: ReplayState) -> list[dict[str, float]]:
        """The scheduled values per param group, as plain floats."""
        groups = len(self.spec.initial_values)
        values = state.values
        if self.split_betas:  # the optimizer uses betas[0]; the key is MMEngine's scratch
            values = {p: values[BETA0] if p == "momentum" else values[p]
                      for p in self.spec.params}
        return [{p: float(v[g]) for p, v in values.items()} for g in range(groups)]
