"""Hugging Face ``transformers`` schedules as closed-form scheduler types (paramsched's own).

The HF ``Trainer`` builds its scheduler with ``transformers.get_scheduler``: a torch
``LambdaLR`` whose value at step ``k`` is ``base * lr_lambda(k)`` (``base`` is the
group's ``initial_lr``). Chained MMEngine arithmetic cannot reproduce those values bit
for bit (and a linear decay must end at exactly 0), so each HF schedule is a type of its
own here, computing that same product with the lambda's operations in HF's order:

* ``constant``: ``HFConstantLR`` (no fields);
* ``constant_with_warmup``: ``HFConstantWithWarmupLR`` (``num_warmup_steps``);
* ``linear``: ``HFLinearLR`` (``num_warmup_steps``, ``num_training_steps``);
* ``cosine``: ``HFCosineLR`` (warm-up, training, ``num_cycles`` = 0.5);
* ``cosine_with_restarts``: ``HFCosineWithRestartsLR`` (warm-up, training,
  ``num_cycles`` = 1);
* ``polynomial``: ``HFPolynomialLR`` (warm-up, training, ``lr_init``: required, HF's
  ``optimizer.defaults["lr"]``; ``lr_end`` = 1e-7, ``power`` = 1.0);
* ``inverse_sqrt``: ``HFInverseSqrtLR`` (warm-up, ``timescale``: the warm-up or 10000);
* ``cosine_with_min_lr``: ``HFCosineWithMinLRLR`` (warm-up, training, ``num_cycles``,
  ``min_lr_rate``: required);
* ``cosine_warmup_with_min_lr``: ``HFCosineWarmupWithMinLRLR`` (as above, and
  ``warmup_lr_rate`` = None);
* ``warmup_stable_decay``: ``HFWarmupStableDecayLR`` (warm-up, ``num_decay_steps``:
  required, ``num_stable_steps`` or training, ``warmup_type`` = linear, ``decay_type`` =
  cosine, ``min_lr_ratio`` = 0, ``num_cycles`` = 0.5).

Each kind also has a ``*ParamScheduler`` type (``HFLinearParamScheduler``, with
``param_name``); no ``Momentum`` family.

``k`` is the scheduler's step inside its window ``[begin, end)`` (the HF ``current_step``
when ``begin=0``); ``num_training_steps`` defaults to the window's length. The types take
the common fields (``begin``, ``end``, ``by_epoch``: True by default as for every type, so
give ``by_epoch=False`` for HF's per-optimizer-step schedules; ``convert_to_iter_based``
scales the step counts). HF's ``min_lr`` (``cosine_with_min_lr``) is ``min_lr /
optimizer.defaults["lr"]`` as ``min_lr_rate``; the HF integration converts it.

Inputs on which HF would crash while training (a zero-length polynomial decay, a zero
timescale) or that it refuses when built (``lr_end >= lr_init``) are refused up front,
naming the field. ``reduce_lr_on_plateau`` is MMEngine's ``ReduceOnPlateauLR``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import fields as f
from .errors import ConfigError
from .rules import Extras, Rule, Values

#: The HF warm-up, decay and restart shapes of ``warmup_stable_decay``.
WSD_SHAPES = ("linear", "cosine", "1-sqrt")

def hf_fields(required: Any) -> dict[str, dict[str, tuple[f.Check, Any]]]:
    """kind -> its fields (check, default); ``required`` is ``config``'s marker of a
    mandatory field (``config`` owns it and imports this module)."""
    warmup = {"num_warmup_steps": (f.integer(low=0), 0)}
    training = warmup | {"num_training_steps": (f.optional(f.integer(low=0)), None)}
    return {
        "HFConstant": {},
        "HFConstantWithWarmup": warmup,
        "HFLinear": training,
        "HFCosine": training | {"num_cycles": (f.number(), 0.5)},
        "HFCosineWithRestarts": training | {"num_cycles": (f.number(), 1)},
        "HFPolynomial": training | {
            "lr_init": (f.number(low=0, low_open=True), required),
            "lr_end": (f.number(), 1e-7),
            "power": (f.number(), 1.0),
        },
        "HFInverseSqrt": warmup | {
            "timescale": (f.optional(f.number(low=0, low_open=True)), None)},
        "HFCosineWithMinLR": training | {
            "num_cycles": (f.number(), 0.5),
            "min_lr_rate": (f.number(), required),
        },
        "HFCosineWarmupWithMinLR": training | {
            "num_cycles": (f.number(), 0.5),
            "min_lr_rate": (f.number(), required),
            "warmup_lr_rate": (f.optional(f.number()), None),
        },
        "HFWarmupStableDecay": training | {
            "num_decay_steps": (f.integer(low=0), required),
            "num_stable_steps": (f.optional(f.integer(low=0)), None),
            "warmup_type": (f.choice(*WSD_SHAPES), "linear"),
            "decay_type": (f.choice(*WSD_SHAPES), "cosine"),
            "min_lr_ratio": (f.number(), 0),
            "num_cycles": (f.number(), 0.5),
        },
    }


HF_KINDS = tuple(hf_fields(None))

#: Step counts that ``convert_to_iter_based`` multiplies by ``epoch_length``.
HF_PERIOD_FIELDS: dict[str, tuple[str, ...]] = {
    kind: tuple(name for name in fields if name in (
        "num_warmup_steps", "num_training_steps", "num_decay_steps", "num_stable_steps",
        "timescale"))
    for kind, fields in hf_fields(None).items()
}


def _warmup(k: int, w: int) -> float:
    """The linear warm-up of most HF schedules: ``k / max(1, w)``."""
    return float(k) / float(max(1, w))


@dataclass(frozen=True)
class HFRule(Rule):
    """Not chainable: the value is ``base * factor(k)``, LambdaLR's product."""

    @abstractmethod
    def factor(self, k: int) -> float:
        """HF's ``lr_lambda(k)``."""

    def next_values(self, current: Values, base: Values, extras: Extras, k: int) -> Values:
        factor = self.factor(k)
        return [b * factor for b in base]


@dataclass(frozen=True)
class HFConstantRule(HFRule):
    """``1`` (an int, as HF's lambda returns)."""

    def factor(self, k: int) -> float:
        return 1


@dataclass(frozen=True)
class HFConstantWithWarmupRule(HFRule):
    """``k / max(1.0, w)`` during the warm-up, then ``1.0``."""

    num_warmup_steps: int

    def factor(self, k: int) -> float:
        if k < self.num_warmup_steps:
            return float(k) / float(max(1.0, self.num_warmup_steps))
        return 1.0


@dataclass(frozen=True)
class HFLinearRule(HFRule):
    """Warm-up, then ``max(0, (T - k) / max(1, T - w))``: exactly 0 at ``k = T``."""

    num_warmup_steps: int
    num_training_steps: int

    def factor(self, k: int) -> float:
        w, t = self.num_warmup_steps, self.num_training_steps
        if k < w:
            return _warmup(k, w)
        return max(0.0, float(t - k) / float(max(1, t - w)))


def _progress(k: int, w: int, t: int) -> float:
    return float(k - w) / float(max(1, t - w))


@dataclass(frozen=True)
class HFCosineRule(HFRule):
    """Warm-up, then ``max(0, (1 + cos(pi * cycles * 2 * p)) / 2)``, ``p = (k-w)/(T-w)``."""

    num_warmup_steps: int
    num_training_steps: int
    num_cycles: float

    def factor(self, k: int) -> float:
        w = self.num_warmup_steps
        if k < w:
            return _warmup(k, w)
        progress = _progress(k, w, self.num_training_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(self.num_cycles) * 2.0 * progress)))


@dataclass(frozen=True)
class HFCosineWithRestartsRule(HFRule):
    """Warm-up, then ``(1 + cos(pi * ((cycles * p) % 1))) / 2`` (hard restarts); 0 from
    ``p >= 1`` on."""

    num_warmup_steps: int
    num_training_steps: int
    num_cycles: float

    def factor(self, k: int) -> float:
        w = self.num_warmup_steps
        if k < w:
            return _warmup(k, w)
        progress = _progress(k, w, self.num_training_steps)
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(self.num_cycles) * progress)
                                                          % 1.0))))


@dataclass(frozen=True)
class HFPolynomialRule(HFRule):
    """Warm-up, then ``((lr_init - lr_end) * (1 - (k-w)/(T-w))**power + lr_end) / lr_init``;
    past ``T``: ``lr_end / lr_init``. ``lr_init`` is the optimizer's default lr (HF's)."""

    num_warmup_steps: int
    num_training_steps: int
    lr_init: float
    lr_end: float
    power: float

    def factor(self, k: int) -> float:
        w, t = self.num_warmup_steps, self.num_training_steps
        if k < w:
            return _warmup(k, w)
        if k > t:
            return self.lr_end / self.lr_init
        lr_range = self.lr_init - self.lr_end
        decay_steps = t - w
        pct_remaining = 1 - (k - w) / decay_steps
        # w <= k <= t here, so pct_remaining is in [0, 1] and its power is real.
        decay = lr_range * pct_remaining**self.power + self.lr_end
        return decay / self.lr_init


@dataclass(frozen=True)
class HFInverseSqrtRule(HFRule):
    """Warm-up, then ``1 / sqrt((k + timescale - w) / timescale)``."""

    num_warmup_steps: int
    timescale: float

    def factor(self, k: int) -> float:
        w = self.num_warmup_steps
        if k < w:
            return _warmup(k, w)
        shift = self.timescale - w
        return 1.0 / math.sqrt((k + shift) / self.timescale)


@dataclass(frozen=True)
class HFCosineWithMinLRRule(HFRule):
    """HF's cosine, scaled into ``[min_lr_rate, 1]``: ``c * (1 - m) + m``."""

    num_warmup_steps: int
    num_training_steps: int
    num_cycles: float
    min_lr_rate: float

    def factor(self, k: int) -> float:
        w = self.num_warmup_steps
        if k < w:
            return _warmup(k, w)
        progress = _progress(k, w, self.num_training_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * float(self.num_cycles) * 2.0 * progress))
        factor = factor * (1 - self.min_lr_rate) + self.min_lr_rate
        return max(0, factor)


@dataclass(frozen=True)
class HFCosineWarmupWithMinLRRule(HFRule):
    """``cosine_warmup_with_min_lr``: HF's float arithmetic, a warm-up that reaches 1 at its
    last step (``(k+1)/w``, or from ``warmup_lr_rate``), a cosine shifted by one step."""

    num_warmup_steps: int
    num_training_steps: int
    num_cycles: float
    min_lr_rate: float
    warmup_lr_rate: float | None

    def factor(self, k: int) -> float:
        step = float(k)
        w = float(self.num_warmup_steps)
        t = float(self.num_training_steps)
        if step < w:
            if self.warmup_lr_rate is None:
                return (step + 1.0) / max(1.0, w)
            rate = float(self.warmup_lr_rate)
            return rate + (1.0 - rate) * (step) / (max(1, w - 1))
        progress = (step - w + 1.0) / (max(1.0, t - w))
        factor = 0.5 * (1.0 + math.cos(math.pi * self.num_cycles * 2.0 * progress))
        factor = factor * (1 - self.min_lr_rate) + self.min_lr_rate
        return max(0, factor)


def _shape_up(shape: str, progress: float) -> float:
    if shape == "linear":
        return progress
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * progress))
    return 1.0 - math.sqrt(1.0 - progress)


@dataclass(frozen=True)
class HFWarmupStableDecayRule(HFRule):
    """Warm-up (``warmup_type``), stable at 1, decay (``decay_type``) over
    ``num_decay_steps``, then ``min_lr_ratio``; warm-up and decay are scaled into
    ``[min_lr_ratio, 1]``. Not paramsched's ``WarmupStableDecayLR`` (other formulas)."""

    num_warmup_steps: int
    num_stable_steps: int
    num_decay_steps: int
    warmup_type: str
    decay_type: str
    min_lr_ratio: float
    num_cycles: float

    def factor(self, k: int) -> float:
        w, s, d = self.num_warmup_steps, self.num_stable_steps, self.num_decay_steps
        ratio = self.min_lr_ratio
        if k < w:
            factor = _shape_up(self.warmup_type, float(k) / float(max(1, w)))
            factor = factor * (1.0 - ratio) + ratio
            return max(0.0, factor)
        if k < w + s:
            return 1.0
        if k < w + s + d:
            progress = float(k - w - s) / float(max(1, d))
            if self.decay_type == "linear":
                factor = 1.0 - progress
            elif self.decay_type == "cosine":
                factor = 0.5 * (1.0 + math.cos(math.pi * float(self.num_cycles) * 2.0 * progress))
            else:
                factor = 1.0 - math.sqrt(progress)
            factor = factor * (1.0 - ratio) + ratio
            return max(0.0, factor)
        return ratio


Fail = Callable[[str, str], ConfigError]


def build_hf_rule(kind: str, v: dict[str, Any], begin: float, end: float, steps: int,
                  fail: Fail) -> HFRule:
    """The rule of one HF type, validated; ``steps``: how many of its window's steps the
    scheduler takes in training (``k`` runs ``0..steps-1``)."""
    if kind == "HFConstant":
        return HFConstantRule()
    w = v["num_warmup_steps"]
    if kind == "HFConstantWithWarmup":
        return HFConstantWithWarmupRule(w)
    if kind == "HFInverseSqrt":
        timescale = v["timescale"]
        return HFInverseSqrtRule(w, (w or 10_000) if timescale is None else timescale)
    if kind == "HFWarmupStableDecay" and v["num_stable_steps"] is not None:
        return _wsd(v, v["num_stable_steps"])  # HF then ignores num_training_steps
    t = v["num_training_steps"]
    if t is None:
        length = end - begin
        if not math.isfinite(length) or not float(length).is_integer() or length >= 10**9:
            raise fail("num_training_steps", f"is required when the window [begin, end) = "
                                             f"[{begin}, {end}) has no whole finite length")
        t = int(length)
    last = steps - 1  # the largest k reached
    if kind == "HFLinear":
        return HFLinearRule(w, t)
    if kind == "HFCosine":
        return HFCosineRule(w, t, v["num_cycles"])
    if kind == "HFCosineWithRestarts":
        return HFCosineWithRestartsRule(w, t, v["num_cycles"])
    if kind == "HFPolynomial":
        lr_init, lr_end, power = v["lr_init"], v["lr_end"], v["power"]
        if not lr_init > lr_end:
            raise fail("lr_end", f"must be smaller than lr_init ({lr_init}), got {lr_end} "
                                 "(transformers refuses it)")
        if t == w and w <= last:
            raise fail("num_warmup_steps", f"{w} equals num_training_steps: the decay has no "
                                           f"steps and step {t} divides by zero (HF crashes "
                                           "with ZeroDivisionError)")
        if power < 0 and w <= t <= last:
            raise fail("power", f"{power} is negative: at step {t} 0 ** power divides by zero "
                                "(HF crashes with ZeroDivisionError)")
        return HFPolynomialRule(w, t, lr_init, lr_end, power)
    if kind == "HFCosineWithMinLR":
        return HFCosineWithMinLRRule(w, t, v["num_cycles"], v["min_lr_rate"])
    if kind == "HFCosineWarmupWithMinLR":
        rate = v["warmup_lr_rate"]
        return HFCosineWarmupWithMinLRRule(w, t, v["num_cycles"], v["min_lr_rate"], rate)
    # HFWarmupStableDecay without num_stable_steps: HF derives it (it may be negative:
    # the decay then starts before the warm-up ends, as in HF).
    return _wsd(v, t - w - v["num_decay_steps"])


def _wsd(v: dict[str, Any], stable: int) -> HFWarmupStableDecayRule:
    return HFWarmupStableDecayRule(v["num_warmup_steps"], stable, v["num_decay_steps"],
                                   v["warmup_type"], v["decay_type"], v["min_lr_ratio"],
                                   v["num_cycles"])
