"""Hypothesis strategies: random MMEngine ``param_scheduler`` jobs.

A :class:`Case` is everything both the MMEngine oracle and our engine need: the
scheduler config list, the optimizer's initial param-group values (SGD with momentum
or Adam with betas, 1-3 groups), the loop length and per-epoch validation metrics.

The strategies cover every scheduler kind (Constant, Linear, Exponential, Step,
MultiStep, CosineAnnealing, Poly, CosineRestart, ReduceOnPlateau as ``*LR``,
``*Momentum`` and ``*ParamScheduler`` variants, plus OneCycle as ``*LR`` and
``*ParamScheduler``), up to six schedulers per job, omitted/given ``begin``/``end``
(fractional, negative, ``float('inf')``), overlapping windows and gaps, mixed
``by_epoch``, ``convert_to_iter_based``, every documented option, and the loose inputs
MMEngine trains with: ints for bools (``by_epoch=0``), floats for ints (``milestones=[2.0]``,
``step_size=2.5``, ``patience=1.5``), scoped type names (``'mmengine.LinearLR'``),
generic schedulers on ``momentum`` with Adam, NaN/inf validation metrics (monitored or
not), float32 tensor lrs (``Case.dtypes``), several groups, iteration-based jobs.
Values stay in sane ranges so that most cases are valid, but a small share is
deliberately invalid (MMEngine crashes on them; our engine must reject them with
``ConfigError``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

Config = dict[str, Any]

FAMILIES = (
    "Constant",
    "Linear",
    "Exponential",
    "Step",
    "MultiStep",
    "CosineAnnealing",
    "Poly",
    "CosineRestart",
    "ReduceOnPlateau",
    "OneCycle",
)

#: MMEngine class name of each (family, flavour); flavour is "LR", "Momentum" or "Param".
_PARAM_NAMES = {
    "Constant": "ConstantParamScheduler",
    "Linear": "LinearParamScheduler",
    "Exponential": "ExponentialParamScheduler",
    "Step": "StepParamScheduler",
    "MultiStep": "MultiStepParamScheduler",
    "CosineAnnealing": "CosineAnnealingParamScheduler",
    "Poly": "PolyParamScheduler",
    "CosineRestart": "CosineRestartParamScheduler",
    "ReduceOnPlateau": "ReduceOnPlateauParamScheduler",
    "OneCycle": "OneCycleParamScheduler",
}


def type_name(family: str, flavour: str) -> str:
    if flavour == "Param":
        return _PARAM_NAMES[family]
    return f"{family}{flavour}"


@dataclass
class Case:
    """One job: what ``build_job_spec`` and ``mmengine_curves`` both take."""

    param_scheduler: list[Config]
    initial_values: list[dict[str, Any]]
    epoch_length: int
    max_epochs: int | None = None
    max_iters: int | None = None
    metrics: dict[int, dict[str, float] | None] = field(default_factory=dict)
    #: per group ``{param: "float32"}`` for values held as float32 tensors, or None
    dtypes: list[dict[str, str]] | None = None

    @property
    def total_iters(self) -> int:
        if self.max_epochs is not None:
            return self.max_epochs * self.epoch_length
        assert self.max_iters is not None
        return self.max_iters

    @property
    def adam(self) -> bool:
        return any("betas" in g for g in self.initial_values)

    def decisions(self) -> dict[int, dict[str, float] | None]:
        """The engine's decisions: every epoch's metrics (or ``None``)."""
        if self.max_epochs is None:
            return {}
        return {e: copy.deepcopy(self.metrics.get(e)) for e in range(self.max_epochs)}

    def loop_kwargs(self) -> dict[str, int]:
        if self.max_epochs is not None:
            return {"max_epochs": self.max_epochs}
        assert self.max_iters is not None
        return {"max_iters": self.max_iters}

    def describe(self) -> str:
        lines = [
            f"epoch_length={self.epoch_length} max_epochs={self.max_epochs} "
            f"max_iters={self.max_iters}",
            f"initial_values={self.initial_values!r}",
            "param_scheduler=[",
            *(f"    {cfg!r}," for cfg in self.param_scheduler),
            "]",
            f"metrics={self.metrics!r}",
            f"dtypes={self.dtypes!r}",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- values


def _nice_or_float(nice: list[float], lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from(nice),
        st.floats(lo, hi, allow_nan=False, allow_infinity=False),
    )


factors = _nice_or_float([0.1, 0.25, 0.5, 1.0 / 3, 0.75, 1.0], 0.01, 1.0)
gammas = _nice_or_float([0.1, 0.5, 0.9, 0.95, 1.0], 0.05, 1.0)
eta_mins = st.sampled_from([0.0, 0.0, 1e-5, 1e-3, 0.01, 0.05])
eta_min_ratios = st.sampled_from([0.0, 0.01, 0.1, 0.5])


@st.composite
def sgd_group(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(_nice_or_float([0.1, 0.01, 0.02, 0.05, 0.3], 1e-4, 1.0)),
        "momentum": draw(st.sampled_from([0.9, 0.95, 0.8, 0.5, 0.99])),
        "weight_decay": draw(st.sampled_from([0.0, 1e-4, 5e-4, 0.05])),
    }


@st.composite
def adam_group(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "lr": draw(_nice_or_float([1e-3, 3e-4, 1e-4, 0.01], 1e-5, 0.1)),
        "betas": [
            draw(st.sampled_from([0.9, 0.95, 0.85, 0.8])),
            draw(st.sampled_from([0.999, 0.99, 0.98])),
        ],
        "weight_decay": draw(st.sampled_from([0.0, 1e-4, 0.01])),
    }


@st.composite
def initial_values(draw: st.DrawFn, adam: bool | None = None) -> list[dict[str, Any]]:
    if adam is None:
        adam = draw(st.booleans())
    n = draw(st.integers(1, 3))
    return [draw(adam_group() if adam else sgd_group()) for _ in range(n)]


# --------------------------------------------------------------------------- windows


def _rare(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n + 1`` draws (shrinks to False, the valid choice)."""
    return st.sampled_from([False] * n + [True])


@dataclass
class _Loop:
    epoch_length: int
    max_epochs: int | None
    max_iters: int | None
    n_groups: int
    adam: bool

    @property
    def total_iters(self) -> int:
        if self.max_epochs is not None:
            return self.max_epochs * self.epoch_length
        assert self.max_iters is not None
        return self.max_iters

    @property
    def epochs(self) -> int:
        """Epochs the run spans (at least 1)."""
        return max(1, -(-self.total_iters // self.epoch_length))


@st.composite
def _window(draw: st.DrawFn, horizon: int, allow_invalid: bool = True) -> Config:
    """``begin``/``end`` keys (each possibly omitted) within ``[0, horizon + 2]``."""
    kind = draw(st.sampled_from(["none", "begin", "end", "both", "both", "both"]))
    out: Config = {}
    if kind in ("begin", "both"):
        out["begin"] = draw(st.integers(0, max(0, horizon)))
        if draw(_rare(8)):
            out["begin"] = -draw(st.integers(1, 3))  # a window opened before the build
    if kind in ("end", "both"):
        lo = max(0, out.get("begin", 0))
        if allow_invalid and draw(_rare(30)):
            out["end"] = out.get("begin", 0)  # end <= begin: MMEngine raises ValueError
        elif draw(_rare(12)):
            out["end"] = math.inf  # MMEngine's end=float('inf'): no end
        else:
            out["end"] = lo + draw(st.integers(1, max(1, horizon + 2 - lo)))
    return out


# --------------------------------------------------------------------------- schedulers


@st.composite
def _family_kwargs(
    draw: st.DrawFn, family: str, unit_horizon: int, loop: _Loop, window: Config
) -> Config:
    """The kind-specific arguments of one scheduler."""
    kw: Config = {}
    end = window.get("end", unit_horizon)
    end = unit_horizon + 2 if end == math.inf else end
    span = int(max(1, end - max(0, window.get("begin", 0))))
    if family == "Constant":
        if draw(_rare(40)):
            kw["factor"] = 0.0  # 1/0 at the last in-window step
        elif draw(st.booleans()):
            kw["factor"] = draw(factors)
    elif family == "Linear":
        if draw(st.booleans()):
            kw["start_factor"] = 0.0 if draw(_rare(40)) else draw(factors)
        if draw(st.booleans()):
            kw["end_factor"] = draw(factors)
        if draw(_rare(40)):
            kw["start_factor"] = 1.5  # ValueError
    elif family == "Exponential":
        kw["gamma"] = draw(st.one_of(gammas, st.sampled_from([1.05, 1.2])))
    elif family == "Step":
        kw["step_size"] = 0 if draw(_rare(40)) else draw(st.integers(1, 4))
        if draw(_rare(4)):
            kw["step_size"] = draw(st.sampled_from([1.0, 2.0, 1.5, 2.5]))  # floats for ints
        if draw(st.booleans()):
            kw["gamma"] = draw(gammas)
    elif family == "MultiStep":
        kw["milestones"] = sorted(
            draw(st.lists(st.integers(0, unit_horizon + 1), min_size=0, max_size=4))
        )
        if kw["milestones"] and draw(_rare(3)):  # floats for ints: 2.0, or 2.5 (converted)
            half = draw(st.booleans())
            kw["milestones"] = [m + 0.5 if half else float(m) for m in kw["milestones"]]
        if draw(st.booleans()):
            kw["gamma"] = draw(gammas)
    elif family == "CosineAnnealing":
        t_max = draw(st.sampled_from(["omit", "omit", "int", "int", "short", "float", "zero"]))
        if t_max == "int":
            kw["T_max"] = draw(st.integers(1, max(1, unit_horizon)))
        elif t_max == "short":
            kw["T_max"] = draw(st.integers(1, max(1, span // 3)))  # re-anchoring
        elif t_max == "float":
            kw["T_max"] = draw(st.sampled_from([1.5, 2.0, 2.5]))
        elif t_max == "zero":
            kw["T_max"] = 0  # falls back to end - begin
        eta = draw(st.sampled_from(["omit", "eta_min", "eta_min", "ratio", "ratio"] * 3 + ["both"]))
        if eta in ("eta_min", "both"):
            kw["eta_min"] = draw(eta_mins)
        if eta in ("ratio", "both"):
            kw["eta_min_ratio"] = draw(eta_min_ratios)
    elif family == "Poly":
        if draw(st.booleans()):
            kw["eta_min"] = draw(eta_mins)
        if draw(st.booleans()):
            kw["power"] = draw(st.sampled_from([0.5, 1.0, 2.0, 3.0, 0.9, 2]))
    elif family == "CosineRestart":
        periods = draw(
            st.lists(st.integers(1, max(1, unit_horizon // 2 + 1)), min_size=1, max_size=3)
        )
        kw["periods"] = periods
        if draw(_rare(4)):  # floats for ints
            kw["periods"] = [p + draw(st.sampled_from([0.0, 0.5])) for p in periods]
        n_weights = len(periods)
        if draw(_rare(30)):
            n_weights += 1  # AssertionError: lengths differ
        if draw(st.booleans()) or n_weights != 1:
            kw["restart_weights"] = draw(
                st.lists(
                    st.sampled_from([1.0, 0.7, 0.5, 0.3]), min_size=n_weights, max_size=n_weights
                )
            )
        eta = draw(st.sampled_from(["eta_min", "ratio"] * 6 + ["none", "both"]))
        if eta in ("eta_min", "both"):
            kw["eta_min"] = draw(eta_mins)
        if eta in ("ratio", "both"):
            kw["eta_min_ratio"] = draw(eta_min_ratios)
    elif family == "ReduceOnPlateau":
        kw["monitor"] = draw(st.sampled_from(["loss", "loss", "acc"]))
        kw["rule"] = "greater" if kw["monitor"] == "acc" else "less"
        if draw(_rare(10)):
            kw["rule"] = draw(st.sampled_from(["less", "greater"]))
        kw["factor"] = draw(st.sampled_from([0.1, 0.5, 0.8]))
        kw["patience"] = draw(st.integers(0, 3))
        if draw(_rare(4)):
            kw["patience"] = draw(st.sampled_from([0.5, 1.5, 2.0]))  # floats for ints
        if draw(st.booleans()):
            kw["threshold"] = draw(st.sampled_from([0.0, 1e-4, 0.05]))
        if draw(st.booleans()):
            kw["threshold_rule"] = draw(st.sampled_from(["rel", "abs"]))
        if draw(st.booleans()):
            kw["cooldown"] = draw(st.sampled_from([0, 1, 2, 0.5, 1.0]))
        min_value = draw(st.sampled_from(["omit", "scalar", "list", "badlist"]))
        if min_value == "scalar":
            kw["min_value"] = draw(st.sampled_from([0.0, 1e-4, 1e-3, 0.005]))
        elif min_value in ("list", "badlist"):
            n = loop.n_groups + (1 if min_value == "badlist" else 0)
            kw["min_value"] = draw(
                st.lists(st.sampled_from([0.0, 1e-4, 1e-3, 0.005]), min_size=n, max_size=n)
            )
        if draw(_rare(5)):
            kw["eps"] = draw(st.sampled_from([0.0, 1e-3, 1e-2]))
        if draw(_rare(40)):
            kw["factor"] = 1.0  # ValueError
    elif family == "OneCycle":
        if draw(_rare(3)):
            kw["eta_max"] = draw(
                st.lists(
                    st.sampled_from([0.01, 0.1, 0.5]),
                    min_size=loop.n_groups,
                    max_size=loop.n_groups,
                )
            )
        else:
            kw["eta_max"] = draw(st.sampled_from([0.01, 0.1, 0.2, 1.0]))
        if draw(_rare(3)):
            # ValueError at run time if the window is longer than this
            kw["total_steps"] = draw(st.integers(span, span + 5))
            if draw(_rare(10)):
                kw["total_steps"] = max(1, span - 1)
        if draw(st.booleans()):
            kw["pct_start"] = draw(st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.75]))
        if draw(st.booleans()):
            kw["anneal_strategy"] = draw(st.sampled_from(["cos", "linear"]))
        if draw(st.booleans()):
            kw["div_factor"] = draw(st.sampled_from([25.0, 10.0, 2.0]))
        if draw(st.booleans()):
            kw["final_div_factor"] = draw(st.sampled_from([1e4, 100.0, 1.0]))
        if draw(st.booleans()):
            kw["three_phase"] = draw(st.sampled_from([True, False, 0, 1]))
    else:  # pragma: no cover
        raise AssertionError(family)
    return kw


@st.composite
def scheduler_cfg(draw: st.DrawFn, loop: _Loop, family: str | None = None) -> Config:
    """One scheduler config dict."""
    if family is None:
        # In an iter-based job ReduceOnPlateau gets no metrics (no epoch ends), as in
        # IterBasedTrainLoop without validation: it only counts, at the very end.
        family = draw(st.sampled_from(FAMILIES))
    flavours = ["LR", "LR", "Momentum", "Param"] if family != "OneCycle" else ["LR", "Param"]
    flavour = draw(st.sampled_from(flavours))
    cfg: Config = {"type": type_name(family, flavour)}
    if draw(_rare(6)):
        cfg["type"] = f"mmengine.{cfg['type']}"  # a scoped name, as in a config file
    if flavour == "Param":
        if family == "OneCycle":
            names = ["lr"] * 10 + ["momentum"]  # OneCycle asserts param_name == 'lr'
        elif loop.adam:
            # momentum: MMEngine's group key, there once a Momentum scheduler is built
            # (``cases`` puts one first); betas[0] follows only when one steps.
            names = ["lr", "weight_decay", "momentum"]
        else:
            names = ["lr", "momentum", "weight_decay"]
        cfg["param_name"] = draw(st.sampled_from(names))
        if draw(_rare(60)):
            cfg["param_name"] = "no_such_key"  # KeyError when built

    # by_epoch: omitted (True), True, False; OneCycle is mostly per iteration and
    # ReduceOnPlateau only supports by_epoch=True.
    if family == "OneCycle":
        by_epoch_choices: list[bool | int | None] = [False, False, False, None, True, 0]
    elif family == "ReduceOnPlateau":
        by_epoch_choices = [None, None, True, True, 1] * 5 + [False]
    else:
        by_epoch_choices = [None, True, False, False, 0, 1]  # ints for bools too
    by_epoch = draw(st.sampled_from(by_epoch_choices))
    if by_epoch is not None:
        cfg["by_epoch"] = by_epoch
    in_epochs = by_epoch is None or bool(by_epoch)
    convert = False
    if in_epochs and family != "ReduceOnPlateau" and draw(_rare(3)):
        convert = True
    elif not in_epochs and draw(_rare(60)):
        convert = True  # AssertionError: only epoch-based configs convert
    if convert:
        cfg["convert_to_iter_based"] = draw(st.sampled_from([True, True, 1]))

    horizon = loop.epochs if in_epochs else loop.total_iters
    window = draw(_window(horizon))
    finite: list[str] = sorted(k for k, v in window.items() if v != math.inf)
    if finite and draw(_rare(3 if convert else 6)):
        # fractional windows: converted, int(begin * epoch_length); otherwise MMEngine
        # compares its integer steps with them (a Poly over [0, 3.5) turns complex)
        key = draw(st.sampled_from(finite))
        window[key] = window[key] + 0.5
    cfg.update(window)
    cfg.update(draw(_family_kwargs(family, horizon, loop, window)))
    return cfg


@st.composite
def _warmup_then_main(draw: st.DrawFn, loop: _Loop) -> list[Config]:
    """The everyday pattern: an iteration warm-up, then the main schedule from its end."""
    warm_iters = draw(st.integers(1, max(1, loop.total_iters // 2)))
    warm_family = draw(st.sampled_from(["Linear", "Linear", "Constant", "Exponential"]))
    warm: Config = {
        "type": f"{warm_family}LR",
        "by_epoch": False,
        "begin": 0,
        "end": warm_iters,
    }
    if warm_family == "Linear":
        warm["start_factor"] = draw(st.sampled_from([0.001, 0.01, 0.1, 0.25]))
    elif warm_family == "Constant":
        warm["factor"] = draw(st.sampled_from([0.1, 0.5]))
    else:
        warm["gamma"] = draw(st.sampled_from([0.5, 0.9]))
    main_family = draw(
        st.sampled_from(
            [
                "CosineAnnealing",
                "MultiStep",
                "Step",
                "Poly",
                "Linear",
                "Exponential",
                "CosineRestart",
                "OneCycle",
            ]
        )
    )
    main = draw(scheduler_cfg(loop, family=main_family))
    if not main.get("by_epoch", True):
        main["begin"] = warm_iters
        main["end"] = max(main.get("end", loop.total_iters), warm_iters + 1)
    else:
        main["begin"] = min(warm_iters // loop.epoch_length, loop.epochs - 1)
        main.pop("end", None)
    if main_family == "OneCycle":
        main.pop("total_steps", None)
    main["type"] = type_name(main_family, "LR")
    main.pop("param_name", None)
    extra = draw(st.lists(scheduler_cfg(loop), max_size=1))
    return [warm, main, *extra]


@st.composite
def _metrics(draw: st.DrawFn, epochs: int) -> dict[int, dict[str, float] | None]:
    # NaN and +-inf now and then: a diverged validation loss (NaN is never "better").
    odd = [math.nan, math.inf, -math.inf]
    losses = st.sampled_from([2.0, 1.0, 1.0, 0.9, 0.9, 0.8, 0.85, 0.5, 0.49995] * 4 + odd)
    accs = st.sampled_from([0.1, 0.5, 0.5, 0.6, 0.6, 0.55, 0.9, 0.90004] * 4 + odd)
    out: dict[int, dict[str, float] | None] = {}
    for e in range(epochs):
        choice = draw(st.sampled_from(["full"] * 15 + ["none"] * 4 + ["partial"]))
        if choice == "none":
            out[e] = None  # not validated this epoch
        elif choice == "partial":
            out[e] = {"acc": draw(accs)}  # 'loss' missing: KeyError if monitored
        else:
            out[e] = {"loss": draw(losses), "acc": draw(accs)}
        got = out[e]
        if got is not None and draw(_rare(8)):
            got["unmonitored"] = draw(st.sampled_from(odd))  # a key no scheduler reads
    return out


@st.composite
def cases(draw: st.DrawFn, adam: bool | None = None) -> Case:
    """A random job; epoch-based 3 times out of 4."""
    values = draw(initial_values(adam))
    is_adam = "betas" in values[0]
    epoch_length = draw(st.integers(1, 7))
    if draw(_rare(3)):
        max_epochs = None
        max_iters: int | None = draw(st.integers(1, 40))
    else:
        max_epochs = draw(st.integers(1, 8))
        max_iters = None
    loop = _Loop(epoch_length, max_epochs, max_iters, len(values), is_adam)
    if draw(_rare(3)):
        scheds = draw(_warmup_then_main(loop))
    else:
        scheds = draw(st.lists(scheduler_cfg(loop), min_size=1, max_size=6))
    if is_adam:
        scheds = draw(_momentum_key_first(loop, scheds))
    metrics = draw(_metrics(max_epochs)) if max_epochs is not None else {}
    dtypes = None
    if draw(_rare(4)):  # lr=torch.tensor(...): float32 arithmetic, in some groups or all
        dtypes = [{"lr": "float32"} if draw(st.booleans()) or g == 0 else {}
                  for g in range(len(values))]
    return Case(
        param_scheduler=scheds,
        initial_values=values,
        epoch_length=epoch_length,
        max_epochs=max_epochs,
        max_iters=max_iters,
        metrics=metrics,
        dtypes=dtypes,
    )


def _is_generic_momentum(cfg: Config) -> bool:
    return str(cfg.get("type", "")).endswith("ParamScheduler") and cfg.get(
        "param_name") == "momentum"


@st.composite
def _momentum_key_first(draw: st.DrawFn, loop: _Loop, scheds: list[Config]) -> list[Config]:
    """Adam: a generic scheduler on ``momentum`` needs the key a Momentum scheduler adds
    when built (else MMEngine raises KeyError); put one before it, mostly."""
    out: list[Config] = []
    has_key = False
    for cfg in scheds:
        if _is_generic_momentum(cfg) and not has_key and not draw(_rare(10)):
            family = draw(st.sampled_from([f for f in FAMILIES if f != "OneCycle"]))
            momentum = draw(scheduler_cfg(loop, family=family))
            momentum["type"] = type_name(family, "Momentum")
            momentum.pop("param_name", None)
            out.append(momentum)
            has_key = True
        has_key = has_key or str(cfg.get("type", "")).endswith("Momentum")
        out.append(cfg)
    return out
