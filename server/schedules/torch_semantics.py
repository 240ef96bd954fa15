"""torch's own ``torch.optim.lr_scheduler`` semantics as scheduler types (paramsched's own).

MMEngine's schedulers descend from torch's, but a torch scheduler is not the MMEngine
type of the same name: torch counts ``last_epoch`` over its whole life (no window),
``SequentialLR`` re-initialises each later scheduler at its milestone from the initial
lr (torch's closed form at epoch 0, not the chained value), ``PolynomialLR`` has its own
formula, ``OneCycleLR`` cycles momentum too, ``ReduceLROnPlateau`` starts ``best`` at
``inf``, and a host (Lightning) may step a scheduler only every few iterations. Each
``Torch<Name>`` type computes exactly torch's arithmetic, in torch's operation order:

======================  ====================================  ==============================
torch scheduler         type                                  fields (torch's names)
======================  ====================================  ==============================
``LinearLR``            ``TorchLinearLR``                     ``start_factor``, ``end_factor``,
                                                              ``total_iters``
``ConstantLR``          ``TorchConstantLR``                   ``factor``, ``total_iters``
``StepLR``              ``TorchStepLR``                       ``step_size``, ``gamma``
``MultiStepLR``         ``TorchMultiStepLR``                  ``milestones``, ``gamma``
``ExponentialLR``       ``TorchExponentialLR``                ``gamma``
``CosineAnnealingLR``   ``TorchCosineAnnealingLR``            ``T_max``, ``eta_min``
``PolynomialLR``        ``TorchPolynomialLR``                 ``total_iters``, ``power``
``OneCycleLR``          ``TorchOneCycleLR`` (+                ``max_lr``, ``total_steps``,
                        ``TorchOneCycleMomentum``)            ``pct_start``, ``anneal_strategy``,
                                                              ``div_factor``,
                                                              ``final_div_factor``,
                                                              ``three_phase``; momentum:
                                                              ``base_momentum``, ``max_momentum``;
                                                              a built one's ``initial_lr``,
                                                              ``min_lr``, ``phase_end_steps``
``ReduceLROnPlateau``   ``TorchReduceOnPlateauLR``            ``monitor``, ``mode``, ``factor``,
                                                              ``patience``, ``threshold``,
                                                              ``threshold_mode``, ``cooldown``,
                                                              ``min_lr``, ``eps``
======================  ====================================  ==============================

Every type but the plateau one also takes:

* ``step_period`` / ``step_at`` (default 1 / ``[0]``): when torch's scheduler steps. The
  engine steps the scheduler after every iteration (``by_epoch=False``); torch's steps
  only after those global steps ``g`` with ``g % step_period in step_at``, and its
  ``last_epoch`` counts those. Lightning's ``frequency``, an epoch ``interval`` and its
  per-epoch batch counting all are such patterns (the Lightning integration builds them).
* ``closed_form_start`` (default False): the first step in the window is torch's
  ``_update_lr(0)``, the closed form at epoch 0 from the initial value, as
  ``SequentialLR`` does at a milestone; otherwise it is the constructor's initial step
  (the chained ``get_lr`` at epoch 0 on the current value).

A ``SequentialLR`` is one type per child, each with the window of its milestones (in
engine steps), ``closed_form_start=True`` but for the first. The initial value ``base``
is the group's ``initial_<param>`` (torch's ``base_lrs``). ``TorchReduceOnPlateauLR``
steps at validation points like MMEngine's ``ReduceOnPlateauLR`` (``by_epoch=True``; in
an iteration-based job at its ``val_interval`` points), with torch's ``best = +-inf``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import fields as f
from .errors import ConfigError
from .rules import Extras, PlateauRule, Rule, Values

Fail = Callable[[str, str], ConfigError]

_STEPPING: dict[str, tuple[f.Check, Any]] = {
    "step_period": (f.integer(low=1), 1),
    "step_at": (f.sequence_of(f.integer(low=0), min_len=1), (0,)),
    "closed_form_start": (f.boolean, False),
}


def torch_fields(required: Any) -> dict[str, dict[str, tuple[f.Check, Any]]]:
    """kind -> its fields (check, default); ``required`` is ``config``'s marker of a
    mandatory field (``config`` owns it and imports this module)."""
    one_cycle = {
        "max_lr": (f.number_or_sequence(f.number()), required),
        "total_steps": (f.integer(low=1), required),
        "pct_start": (f.strict_float(low=0.0, high=1.0), 0.3),
        "anneal_strategy": (f.choice("cos", "linear"), "cos"),
        "div_factor": (f.number(), 25.0),
        "final_div_factor": (f.number(), 1e4),
        "three_phase": (f.boolean, False),
        "base_momentum": (f.number_or_sequence(f.number()), 0.85),
        "max_momentum": (f.number_or_sequence(f.number()), 0.95),
        # What a built OneCycleLR holds (a host translating one reads these, since torch
        # keeps neither pct_start nor the div factors): they replace the derived values.
        "initial_lr": (f.optional(f.number_or_sequence(f.number())), None),
        "min_lr": (f.optional(f.number_or_sequence(f.number())), None),
        "phase_end_steps": (f.optional(f.sequence_of(f.number(), min_len=2)), None),
    }
    kinds: dict[str, dict[str, tuple[f.Check, Any]]] = {
        "TorchLinear": {
            "start_factor": (f.number(low=0, high=1, low_open=True), 1.0 / 3),
            "end_factor": (f.number(low=0, high=1), 1.0),
            "total_iters": (f.integer(low=0), 5),
        },
        "TorchConstant": {
            "factor": (f.number(low=0, high=1), 1.0 / 3),
            "total_iters": (f.integer(low=0), 5),
        },
        "TorchStep": {"step_size": (f.integer(low=1), required), "gamma": (f.number(), 0.1)},
        "TorchMultiStep": {
            "milestones": (f.sequence_of(f.integer(low=0)), required),
            "gamma": (f.number(), 0.1),
        },
        "TorchExponential": {"gamma": (f.number(), required)},
        "TorchCosineAnnealing": {
            "T_max": (f.number(), required),
            "eta_min": (f.number(), 0.0),
        },
        "TorchPolynomial": {
            "total_iters": (f.integer(low=0), 5),
            "power": (f.number(), 1.0),
        },
        "TorchOneCycle": one_cycle,
    }
    for fields in kinds.values():
        fields.update(_STEPPING)
    kinds["TorchReduceOnPlateau"] = {
        "monitor": (f.text, "loss"),
        "mode": (f.choice("min", "max"), "min"),
        "factor": (f.number(high=1.0, high_open=True), 0.1),
        "patience": (f.number(), 10),
        "threshold": (f.number(), 1e-4),
        "threshold_mode": (f.choice("rel", "abs"), "rel"),
        "cooldown": (f.number(), 0),
        "min_lr": (f.number_or_sequence(f.number()), 0.0),
        "eps": (f.number(), 1e-8),
    }
    return kinds


TORCH_KINDS = tuple(torch_fields(None))


@dataclass(frozen=True)
class Stepping:
    """Which engine steps are torch steps, and torch's ``last_epoch`` at each.

    Engine step ``k`` of a window beginning at global step ``origin`` is global step
    ``g = origin + k``; torch steps at ``g >= 1`` with ``g % period in at``. Its
    ``last_epoch`` at ``g`` is the number of torch steps in ``(origin, g]`` (0 at the
    window's first step: the constructor's step, or ``SequentialLR``'s ``_update_lr(0)``).
    """

    period: int
    at: tuple[int, ...]  # sorted, unique, each in [0, period)
    origin: int

    def _count(self, g: int) -> int:
        """Torch steps at global steps ``1..g``."""
        full, rest = divmod(g, self.period)
        upto = full * len(self.at) + bisect_right(self.at, rest)
        return upto - (1 if self.at[0] == 0 else 0)

    def epoch(self, k: int) -> int | None:
        """torch's ``last_epoch`` after engine step ``k``, or None: torch does not step."""
        if k == 0:
            return 0
        g = self.origin + k
        if g % self.period not in self.at:
            return None
        return self._count(g) - self._count(self.origin)


@dataclass(frozen=True)
class TorchRule(Rule):
    """Base: ``initial`` (the constructor's step), ``closed0`` (torch's
    ``_get_closed_form_lr`` at epoch 0) and ``chain`` (``get_lr`` at ``last_epoch = e
    >= 1``), each in torch's operation order; the subclass is its math."""

    stepping: Stepping
    closed_form_start: bool

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        e = self.stepping.epoch(k)
        if e is None:
            return list(current)
        if e == 0:
            if self.closed_form_start:
                return [self.closed0(b) for b in base]
            return self.initial(current, base, extras)
        return self.chain(current, base, extras, e)

    def initial(self, current: Values, base: Values, extras: Extras) -> Values:
        return list(current)

    def closed0(self, b: float) -> float:
        raise NotImplementedError

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        raise NotImplementedError


@dataclass(frozen=True)
class TorchLinearRule(TorchRule):
    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    def initial(self, current: Values, base: Values, extras: Extras) -> Values:
        return [v * self.start_factor for v in current]

    def closed0(self, b: float) -> float:
        sf, ef, t = self.start_factor, self.end_factor, self.total_iters
        return b * (sf + (ef - sf) * min(t, 0) / t)

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        if e > self.total_iters:
            return list(current)
        sf, ef = self.start_factor, self.end_factor
        scale = 1.0 + (ef - sf) / (self.total_iters * sf + (e - 1) * (ef - sf))
        return [v * scale for v in current]


@dataclass(frozen=True)
class TorchConstantRule(TorchRule):
    factor: float = 1.0 / 3
    total_iters: int = 5

    def initial(self, current: Values, base: Values, extras: Extras) -> Values:
        return [v * self.factor for v in current]

    def closed0(self, b: float) -> float:
        return b * (self.factor + (self.total_iters <= 0) * (1 - self.factor))

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        if e != self.total_iters:
            return list(current)
        return [v * (1.0 / self.factor) for v in current]


@dataclass(frozen=True)
class TorchStepRule(TorchRule):
    step_size: int = 1
    gamma: float = 0.1

    def closed0(self, b: float) -> float:
        return b * self.gamma ** (0 // self.step_size)

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        if e % self.step_size != 0:
            return list(current)
        return [v * self.gamma for v in current]


@dataclass(frozen=True)
class TorchMultiStepRule(TorchRule):
    milestones: tuple[int, ...] = ()  # sorted, with repeats (torch's Counter elements)
    gamma: float = 0.1
    counts: Counter[int] = field(default_factory=Counter, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", Counter(self.milestones))

    def initial(self, current: Values, base: Values, extras: Extras) -> Values:
        return self.chain(current, base, extras, 0)  # a milestone 0 applies at build

    def closed0(self, b: float) -> float:
        return b * self.gamma ** bisect_right(self.milestones, 0)

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        if e not in self.counts:
            return list(current)
        return [v * self.gamma ** self.counts[e] for v in current]

    def __hash__(self) -> int:  # Counter is unhashable; rules are never hashed by value
        return id(self)


@dataclass(frozen=True)
class TorchExponentialRule(TorchRule):
    gamma: float = 1.0

    def closed0(self, b: float) -> float:
        return b * self.gamma**0

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        return [v * self.gamma for v in current]


@dataclass(frozen=True)
class TorchCosineAnnealingRule(TorchRule):
    t_max: float = 1.0
    eta_min: float = 0.0

    def closed0(self, b: float) -> float:
        return self.eta_min + (b - self.eta_min) * (1 + math.cos(math.pi * 0 / self.t_max)) / 2

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        t, low = self.t_max, self.eta_min
        if (e - 1 - t) % (2 * t) == 0:  # the trough past T_max: re-anchored on base
            return [v + (b - low) * (1 - math.cos(math.pi / t)) / 2
                    for v, b in zip(current, base, strict=True)]
        ratio = (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t))
        return [ratio * (v - low) + low for v in current]


@dataclass(frozen=True)
class TorchPolynomialRule(TorchRule):
    total_iters: int = 5
    power: float = 1.0

    def closed0(self, b: float) -> float:
        t = self.total_iters
        return b * (1.0 - min(t, 0) / t) ** self.power

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        t = self.total_iters
        if e > t:
            return list(current)
        factor = ((1.0 - e / t) / (1.0 - (e - 1) / t)) ** self.power
        if isinstance(factor, complex):
            raise ArithmeticError(f"the factor at epoch {e} is the complex number {factor}")
        return [v * factor for v in current]


@dataclass(frozen=True)
class TorchPhase:
    end_step: float
    start: str  # extras key (lr) or index into the momentum pair
    end: str


def _one_cycle_phases(total: int, pct: float, three: bool) -> tuple[TorchPhase, ...]:
    if three:
        return (TorchPhase(float(pct * total) - 1, "initial_lr", "max_lr"),
                TorchPhase(float(2 * pct * total) - 2, "max_lr", "initial_lr"),
                TorchPhase(total - 1, "initial_lr", "min_lr"))
    return (TorchPhase(float(pct * total) - 1, "initial_lr", "max_lr"),
            TorchPhase(total - 1, "max_lr", "min_lr"))


#: OneCycle's momentum follows the lr phases: max -> base, (base -> max,) ... -> max.
_MOMENTUM_KEYS = {"initial_lr": "max_momentum", "max_lr": "base_momentum",
                  "min_lr": "max_momentum"}


@dataclass(frozen=True)
class TorchOneCycleRule(TorchRule):
    """torch's 1cycle (not chainable): phase ``i`` anneals from its start to its end key
    (``initial_lr``/``max_lr``/``min_lr``, or for momentum ``max_momentum``/
    ``base_momentum``) over ``(previous end_step, end_step]``; the last phase goes on
    past ``total_steps - 1`` (torch raises beyond ``total_steps``)."""

    total_steps: int = 1
    phases: tuple[TorchPhase, ...] = ()
    cosine: bool = True
    max_lrs: tuple[float, ...] = ()
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    # momentum: per group {"max_momentum": m, "base_momentum": b}; empty for lr
    momentum: tuple[tuple[float, float], ...] = ()

    initial_lrs: tuple[float, ...] | None = None  # given: instead of max_lr / div_factor
    min_lrs: tuple[float, ...] | None = None  # given: instead of initial / final_div_factor

    def construction_extras(self) -> list[dict[str, float]]:
        """What torch writes into each group when the scheduler is built."""
        if self.momentum:
            return [{} for _ in self.momentum]
        out = []
        for g, max_lr in enumerate(self.max_lrs):
            initial = max_lr / self.div_factor if self.initial_lrs is None else self.initial_lrs[g]
            low = initial / self.final_div_factor if self.min_lrs is None else self.min_lrs[g]
            out.append({"initial_lr": initial, "max_lr": max_lr, "min_lr": low})
        return out

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.cosine:
            cos_out = math.cos(math.pi * pct) + 1
            return end + (start - end) / 2.0 * cos_out
        return (end - start) * pct + start

    def _values(self, extras: Extras, e: int) -> Values:
        if e > self.total_steps:
            raise ValueError(f"Tried to step {e} times. The specified number of total steps "
                             f"is {self.total_steps}")
        out: Values = []
        for g in range(len(self.momentum) or len(extras)):
            start_step = 0.0
            for i, phase in enumerate(self.phases):
                if e <= phase.end_step or i == len(self.phases) - 1:
                    pct = (e - start_step) / (phase.end_step - start_step)
                    if self.momentum:
                        pair = dict(zip(("max_momentum", "base_momentum"), self.momentum[g],
                                        strict=True))
                        a, b = pair[_MOMENTUM_KEYS[phase.start]], pair[_MOMENTUM_KEYS[phase.end]]
                    else:
                        a, b = extras[g][phase.start], extras[g][phase.end]
                    out.append(self._anneal(a, b, pct))
                    break
                start_step = phase.end_step
        return out

    def initial(self, current: Values, base: Values, extras: Extras) -> Values:
        return self._values(extras, 0)

    def closed0(self, b: float) -> float:
        raise ValueError("OneCycleLR has no closed form; it cannot follow a SequentialLR "
                         "milestone here")

    def chain(self, current: Values, base: Values, extras: Extras, e: int) -> Values:
        return self._values(extras, e)


@dataclass(frozen=True)
class TorchPlateauRule(PlateauRule):
    """torch's ``ReduceLROnPlateau``: MMEngine's rules with ``best`` starting at
    ``+inf`` (``mode='min'``) or ``-inf`` (``'max'``), torch's ``mode_worse``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "worst", math.inf if self.rule == "less" else -math.inf)


def _per_group(value: Any, name: str, groups: int, fail: Fail) -> tuple[float, ...]:
    if isinstance(value, tuple):
        if len(value) != groups:
            raise fail(name, f"must have one value per param group ({groups}), got {len(value)}")
        return value
    return (value,) * groups


def build_torch_rule(kind: str, param: str, v: dict[str, Any], begin: float, by_epoch: bool,
                     groups: int, fail: Fail) -> Rule | PlateauRule:
    """The rule of one Torch type, validated; ``begin``: its window's first global step
    (the origin of ``step_period``/``step_at``)."""
    if v["convert_to_iter_based"]:
        raise fail("convert_to_iter_based", "Torch types count torch's own steps; give "
                                            "step_period/step_at instead")
    if kind == "TorchReduceOnPlateau":
        if not by_epoch:
            raise fail("by_epoch", "TorchReduceOnPlateau steps at validation points: "
                                   "by_epoch=True")
        mins = _per_group(v["min_lr"], "min_lr", groups, fail)
        return TorchPlateauRule(
            monitor=v["monitor"], rule="less" if v["mode"] == "min" else "greater",
            factor=v["factor"], patience=v["patience"], threshold=v["threshold"],
            threshold_rule=v["threshold_mode"], cooldown=v["cooldown"], min_values=mins,
            eps=v["eps"])
    if not float(begin).is_integer() or begin < 0:
        raise fail("begin", f"must be a whole number >= 0 for a Torch type, got {begin!r}")
    period = v["step_period"]
    at = tuple(sorted(set(v["step_at"])))
    if at[-1] >= period:
        raise fail("step_at", f"positions must be below step_period ({period}), got {at[-1]}")
    stepping = Stepping(period, at, int(begin))
    closed = v["closed_form_start"]
    if closed and int(begin) % period not in at:
        raise fail("begin", "a closed_form_start window begins at a torch step "
                            f"(a global step g with g % {period} in {list(at)})")
    common = {"stepping": stepping, "closed_form_start": closed}
    if kind == "TorchLinear":
        if closed and v["total_iters"] == 0:
            raise fail("total_iters", "0 divides by zero in torch's closed form")
        return TorchLinearRule(**common, start_factor=v["start_factor"],
                               end_factor=v["end_factor"], total_iters=v["total_iters"])
    if kind == "TorchConstant":
        if v["factor"] == 0:
            raise fail("factor", "0 divides by zero when the window ends (torch crashes "
                                 "with ZeroDivisionError)")
        return TorchConstantRule(**common, factor=v["factor"], total_iters=v["total_iters"])
    if kind == "TorchStep":
        return TorchStepRule(**common, step_size=v["step_size"], gamma=v["gamma"])
    if kind == "TorchMultiStep":
        return TorchMultiStepRule(**common, milestones=tuple(sorted(v["milestones"])),
                                  gamma=v["gamma"])
    if kind == "TorchExponential":
        return TorchExponentialRule(**common, gamma=v["gamma"])
    if kind == "TorchCosineAnnealing":
        if v["T_max"] == 0:
            raise fail("T_max", "0 divides by zero (torch crashes with ZeroDivisionError)")
        return TorchCosineAnnealingRule(**common, t_max=v["T_max"], eta_min=v["eta_min"])
    if kind == "TorchPolynomial":
        if v["total_iters"] == 0 and closed:
            raise fail("total_iters", "0 divides by zero in torch's closed form")
        return TorchPolynomialRule(**common, total_iters=v["total_iters"], power=v["power"])
    # TorchOneCycle
    if closed:
        raise fail("closed_form_start", "OneCycle has no closed form (torch's SequentialLR "
                                        "cannot restart it)")
    for name in ("div_factor", "final_div_factor"):
        if v[name] == 0:
            raise fail(name, "must not be 0 (division by zero)")
    total, pct = v["total_steps"], v["pct_start"]
    phases = _one_cycle_phases(total, pct, v["three_phase"])
    if v["phase_end_steps"] is not None:
        ends = v["phase_end_steps"]
        if len(ends) != len(phases):
            raise fail("phase_end_steps", f"must have {len(phases)} end steps (three_phase="
                                          f"{v['three_phase']}), got {len(ends)}")
        phases = tuple(TorchPhase(e, p.start, p.end) for e, p in zip(ends, phases, strict=True))
    start = 0.0
    for i, phase in enumerate(phases):
        if phase.end_step - start == 0:
            raise fail("pct_start", f"{pct} makes phase {i + 1} of {total} steps empty, which "
                                    "divides by zero (torch crashes with ZeroDivisionError)")
        start = phase.end_step
    momentum: tuple[tuple[float, float], ...] = ()
    if param != "lr":
        if param != "momentum":
            raise fail("type", f"OneCycle schedules 'lr' and 'momentum', not {param!r}")
        maxes = _per_group(v["max_momentum"], "max_momentum", groups, fail)
        bases = _per_group(v["base_momentum"], "base_momentum", groups, fail)
        momentum = tuple(zip(maxes, bases, strict=True))
    return TorchOneCycleRule(**common, total_steps=total, phases=phases,
                             cosine=v["anneal_strategy"] == "cos",
                             max_lrs=_per_group(v["max_lr"], "max_lr", groups, fail),
                             div_factor=v["div_factor"],
                             final_div_factor=v["final_div_factor"], momentum=momentum,
                             initial_lrs=_optional_per_group(v["initial_lr"], "initial_lr",
                                                             groups, fail),
                             min_lrs=_optional_per_group(v["min_lr"], "min_lr", groups, fail))


def _optional_per_group(value: Any, name: str, groups: int,
                        fail: Fail) -> tuple[float, ...] | None:
    return None if value is None else _per_group(value, name, groups, fail)
