"""The update rule of every MMEngine scheduler kind.

Each rule maps the values the param groups hold now (``current``) to the values after
the scheduler's ``k``-th step inside its window (``k`` is MMEngine's ``last_step``,
0 for the first step). The arithmetic is written in the exact operation order of
MMEngine's chainable ``_get_value`` so that replays are bit-identical:

* chainable rules multiply the current value (so an earlier scheduler's result carries
  into a later, overlapping one);
* ``base`` is the param's ``initial_<param>`` value captured when the scheduler was
  built (cosine re-anchoring, ``eta_min_ratio``, CosineRestart use it);
* ``extras`` are the per-group keys OneCycle writes at construction
  (``initial_lr``, ``max_lr``, ``min_lr``); a later OneCycle overwrites an earlier
  one's, and both then read the later values, as in MMEngine.

Rules are immutable; all counters live in the replay state (see ``replay.py``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

Values = list[float]
Extras = Sequence[dict[str, float]]


class Rule(ABC):
    """Base class: one scheduler kind's math."""

    @abstractmethod
    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        """The values after step ``k`` inside the window."""


@dataclass(frozen=True)
class ConstantRule(Rule):
    """``v*factor`` at step 0, ``v/factor`` at step ``total_iters``, held otherwise."""

    factor: float
    total_iters: float

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        if k == 0:
            return [v * self.factor for v in current]
        if k > self.total_iters or k != self.total_iters:
            return list(current)
        return [v * (1.0 / self.factor) for v in current]


@dataclass(frozen=True)
class LinearRule(Rule):
    """Chainable linear ramp from ``start_factor`` to ``end_factor`` over the window.

    step 0: ``v*start``; step k: ``v*(1 + (end-start)/(T*start + (k-1)*(end-start)))``
    with ``T = end - begin - 1``.
    """

    start_factor: float
    end_factor: float
    total_iters: float

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        if k == 0:
            return [v * self.start_factor for v in current]
        delta = self.end_factor - self.start_factor
        scale = 1.0 + delta / (self.total_iters * self.start_factor + (k - 1) * delta)
        return [v * scale for v in current]


@dataclass(frozen=True)
class ExponentialRule(Rule):
    """``v*gamma`` at every step but the first."""

    gamma: float

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        if k == 0:
            return list(current)
        return [v * self.gamma for v in current]


@dataclass(frozen=True)
class StepRule(Rule):
    """``v*gamma`` at every ``step_size``-th step (never at step 0)."""

    step_size: float
    gamma: float

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        if k == 0 or k % self.step_size != 0:
            return list(current)
        return [v * self.gamma for v in current]


@dataclass(frozen=True)
class MultiStepRule(Rule):
    """``v*gamma**n`` at a step listed ``n`` times in ``milestones``."""

    milestones: Counter[float]
    gamma: float

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        if k not in self.milestones:
            return list(current)
        return [v * self.gamma ** self.milestones[k] for v in current]

    def __hash__(self) -> int:  # Counter is unhashable; rules are never hashed by value
        return id(self)


@dataclass(frozen=True)
class CosineAnnealingRule(Rule):
    """Chainable cosine annealing with period ``T_max``.

    step k: ``(1+cos(pi*k/T)) / (1+cos(pi*(k-1)/T)) * (v - eta_min) + eta_min``; where that
    ratio is 0/0 (``(k-1-T) % 2T == 0``, i.e. past ``T_max`` at the trough) the value is
    re-anchored on the initial value: ``v + (base - eta_min)*(1 - cos(pi/T))/2``.
    With ``eta_min_ratio``, ``eta_min = base*eta_min_ratio``.
    """

    t_max: float
    eta_min: float | None
    eta_min_ratio: float | None

    def _eta_min(self, base_value: float) -> float:
        if self.eta_min_ratio is None:
            assert self.eta_min is not None
            return self.eta_min
        return base_value * self.eta_min_ratio

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        if k == 0:
            return list(current)
        t = self.t_max
        if (k - 1 - t) % (2 * t) == 0:
            return [
                v + (b - self._eta_min(b)) * (1 - math.cos(math.pi / t)) / 2
                for v, b in zip(current, base, strict=True)
            ]
        ratio = (1 + math.cos(math.pi * k / t)) / (1 + math.cos(math.pi * (k - 1) / t))
        if self.eta_min_ratio is None:
            low = self.eta_min
            assert low is not None
            return [ratio * (v - low) + low for v in current]
        mins = [b * self.eta_min_ratio for b in base]
        return [ratio * (v - m) + m for v, m in zip(current, mins, strict=True)]


@dataclass(frozen=True)
class PolyRule(Rule):
    """``(v - eta_min) * (1 - 1/(T - k + 1))**power + eta_min``, ``T = end - begin - 1``."""

    eta_min: float
    power: float
    total_iters: float

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        if k == 0:
            return list(current)
        factor = (1 - 1 / (self.total_iters - k + 1)) ** self.power
        if isinstance(factor, complex):  # refused up front since semantics 2
            raise ArithmeticError(f"the factor at step {k} is the complex number {factor}")
        return [(v - self.eta_min) * factor + self.eta_min for v in current]


@dataclass(frozen=True)
class OnePhase:
    end_step: float
    start_key: str
    end_key: str


@dataclass(frozen=True)
class OneCycleRule(Rule):
    """The 1cycle policy: not chainable, a function of the step and the group extras.

    Phases (two, or three with ``three_phase``) anneal between ``initial_lr``, ``max_lr``
    and ``min_lr`` (cosine or linear); phase i covers steps up to its ``end_step``.
    """

    total_steps: float
    phases: tuple[OnePhase, ...]
    cosine: bool
    max_values: tuple[float, ...]
    div_factor: float
    final_div_factor: float

    def construction_extras(self) -> list[dict[str, float]]:
        """What MMEngine writes into each group when the scheduler is built."""
        out = []
        for max_value in self.max_values:
            initial = max_value / self.div_factor
            out.append({"initial_lr": initial, "max_lr": max_value,
                        "min_lr": initial / self.final_div_factor})
        return out

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.cosine:
            cos_out = math.cos(math.pi * pct) + 1
            return end + (start - end) / 2.0 * cos_out
        return (end - start) * pct + start

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        out: Values = []
        for group in extras:
            start_step: float = 0
            for i, phase in enumerate(self.phases):
                if k <= phase.end_step or i == len(self.phases) - 1:
                    pct = (k - start_step) / (phase.end_step - start_step)
                    out.append(self._anneal(group[phase.start_key], group[phase.end_key], pct))
                    break
                start_step = phase.end_step
        return out


@dataclass(frozen=True)
class CosineRestartRule(Rule):
    """Cosine annealing restarted at the end of every period.

    At the start of period i the value jumps to ``base * restart_weights[i]``; within
    it the chainable cosine ratio applies; past the last period the value is held.
    """

    periods: tuple[float, ...]
    cumulative: tuple[float, ...]
    restart_weights: tuple[float, ...]
    eta_min: float | None
    eta_min_ratio: float | None

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        idx = next((i for i, edge in enumerate(self.cumulative) if k < edge), None)
        if idx is None:
            return list(current)
        weight = self.restart_weights[idx]
        nearest_restart = 0 if idx == 0 else self.cumulative[idx - 1]
        period = self.periods[idx]
        step = k - nearest_restart
        out: Values = []
        for v, b in zip(current, base, strict=True):
            eta_max = b * weight
            eta_min = self.eta_min if self.eta_min_ratio is None else b * self.eta_min_ratio
            assert eta_min is not None
            if step == 0:
                out.append(eta_max)
            else:
                out.append(
                    (1 + math.cos(math.pi * step / period))
                    / (1 + math.cos(math.pi * (step - 1) / period))
                    * (v - eta_min)
                    + eta_min
                )
        return out


@dataclass(frozen=True)
class WarmupStableDecayRule(Rule):
    """Warmup-stable-decay (not an MMEngine type; paramsched's own).

    Not chainable: the value is a function of the initial value ``base`` and the step k:
    a linear warm-up from ``base*warmup_start_factor`` to ``base`` over ``warmup_iters``
    steps, then ``base`` (stable, with no fixed end when ``decay_begin`` is None: a
    reschedule brings the decay), then from step ``decay_begin`` a decay to
    ``base*min_ratio`` over ``decay_iters`` steps (linear, cosine or sqrt), then held.
    """

    warmup_iters: int
    warmup_start_factor: float
    decay_begin: int | None
    decay_iters: int
    decay_shape: str
    min_ratio: float

    def _factor(self, k: int) -> float:
        if k < self.warmup_iters:
            sf = self.warmup_start_factor
            return sf + (1.0 - sf) * k / self.warmup_iters
        if self.decay_begin is None or k < self.decay_begin:
            return 1.0
        progress = min(1.0, (k - self.decay_begin) / self.decay_iters)
        if self.decay_shape == "cosine":
            drop = (1.0 - math.cos(math.pi * progress)) / 2.0
        elif self.decay_shape == "sqrt":
            drop = math.sqrt(progress)
        else:
            drop = progress
        return 1.0 - (1.0 - self.min_ratio) * drop

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        factor = self._factor(k)
        return [b * factor for b in base]


# ReduceOnPlateau: its counters live in the replay state as [best, num_bad, cooldown].
PLATEAU_WORST = 10**9  # MMEngine starts `best` at +-int(1e9), not at +-inf.


@dataclass(frozen=True)
class PlateauRule:
    """ReduceOnPlateau: multiply by ``factor`` after more than ``patience`` bad epochs.

    A metric is better than ``best`` by the threshold rule (``rel``: ``a < best*(1-th)`` for
    ``less``, ``a > best*(1+th)`` for ``greater``; ``abs``: ``best -+ th``). During
    ``cooldown`` epochs bad epochs are not counted. A reduction never goes below
    ``min_value`` and is skipped unless it lowers the value by more than ``eps``.
    """

    monitor: str
    rule: str
    factor: float
    patience: float
    threshold: float
    threshold_rule: str
    cooldown: float
    min_values: tuple[float, ...]
    eps: float
    worst: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "worst", PLATEAU_WORST if self.rule == "less" else -PLATEAU_WORST)

    def is_better(self, a: float, best: float) -> bool:
        if self.rule == "less" and self.threshold_rule == "rel":
            return a < best * (1.0 - self.threshold)
        if self.rule == "less":
            return a < best - self.threshold
        if self.threshold_rule == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def decide(self, current: Values, counters: list[float], metric: float) -> Values | None:
        """Update ``counters`` = [best, num_bad_epochs, cooldown_counter] in place.

        Returns the new values when a reduction happens, else None.
        """
        best, num_bad, cooldown = counters
        if self.is_better(metric, best):
            best, num_bad = metric, 0
        else:
            num_bad += 1
        if cooldown > 0:
            cooldown -= 1
            num_bad = 0
        reduced: Values | None = None
        if num_bad > self.patience:
            reduced = []
            for v, min_v in zip(current, self.min_values, strict=True):
                candidate = max(float(v) * self.factor, min_v)
                reduced.append(candidate if v - candidate > self.eps else v)
            cooldown = self.cooldown
            num_bad = 0
        counters[:] = [best, num_bad, cooldown]
        return reduced
