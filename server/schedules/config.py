"""From an MMEngine ``param_scheduler`` config to a validated, immutable ``JobSpec``.

This module holds the Runner's build rules, each in one place:

* a single dict is a list of one; each dict builds one scheduler, in list order;
* the default ``end`` is ``max_epochs`` when the dict's ``by_epoch`` (default True)
  holds, else ``max_iters``; it is set *before* ``convert_to_iter_based`` scales it
  (an iteration-based job's ``max_epochs`` is 1, as in IterBasedTrainLoop);
* ``convert_to_iter_based=True`` is MMEngine's ``build_iter_from_epoch``: ``begin`` and
  ``end`` become ``int(x * epoch_length)`` (an ``end`` of ``INF`` stays), the kind's
  periods (``step_size``, ``milestones``, ``T_max``, ``periods``, ``total_steps``) are
  multiplied by ``epoch_length``, and ``by_epoch`` becomes False;
* ``WarmupStableDecay{LR,Momentum,ParamScheduler}`` is paramsched's own type (see
  ``rules.WarmupStableDecayRule``), not MMEngine's; so are the Hugging Face schedules
  ``HF<Name>{LR,ParamScheduler}`` (``HFLinearLR``, ...: see ``hf.py``), and torch's own
  schedulers ``Torch<Name>{LR,Momentum,ParamScheduler}`` (``TorchLinearLR``, ...: torch's
  arithmetic and stepping, no window by default: see ``torch_semantics.py``);
* ``Momentum`` types drive ``momentum``, or ``betas[0]`` when the groups have ``betas``
  and no ``momentum`` (Adam-style); ``*ParamScheduler`` types drive ``param_name``. With
  Adam (semantics 2) the ``momentum`` key a Momentum scheduler adds is its own value: a
  generic scheduler on ``momentum`` writes only the key (see ``replay.py``);
* loose inputs are read as MMEngine reads them: flags by truthiness (``by_epoch=0``),
  floats in "int" fields (``step_size=2.5``, ``milestones=[2.0]``, ``patience=1.5``),
  negative or fractional windows, ``end=float('inf')`` (no end; it cannot be
  converted), the scope ``mmengine.`` in a type name;
* NaN and infinities are refused everywhere but in ``end`` (``+inf``);
* ``JobSpec.semantics`` versions these rules per job (``SEMANTICS_VERSIONS``), and
  ``JobSpec.float32`` lists the values held as float32 tensors (see ``float32.py``).

Everything MMEngine rejects, and everything on which it would crash while training
(division or modulo by zero, OneCycle stepping past ``total_steps``), raises
``ConfigError`` here, before anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import fields as f
from .errors import ConfigError
from .hf import HF_KINDS, HF_PERIOD_FIELDS, build_hf_rule, hf_fields
from .rules import (
    ConstantRule,
    CosineAnnealingRule,
    CosineRestartRule,
    ExponentialRule,
    LinearRule,
    MultiStepRule,
    OneCycleRule,
    OnePhase,
    PlateauRule,
    PolyRule,
    Rule,
    StepRule,
    WarmupStableDecayRule,
)
from .torch_semantics import TORCH_KINDS, build_torch_rule, torch_fields

INF = 10**9  # MMEngine's "no end" (int(1e9)); kept unscaled by convert_to_iter_based.
Number = int | float
MMENGINE_SCOPE = "mmengine"

#: Engine semantics versions (see ``JobSpec.semantics``). A job keeps the version it was
#: created with; a stored spec without one is version 1.
#:
#: 1. the first engine: Adam-style ``momentum`` and ``betas[0]`` are one value.
#: 2. (current) MMEngine's two values: a generic ``*ParamScheduler(param_name='momentum')``
#:    writes only the ``momentum`` key, ``betas[0]`` follows when a Momentum scheduler
#:    steps, and a Momentum scheduler built later resets the key from ``betas[0]``;
#:    a Poly step whose value would be complex is refused up front.
SEMANTICS_VERSIONS = (1, 2)
CURRENT_SEMANTICS = SEMANTICS_VERSIONS[-1]
#: Value types a param group value may have: a float (or float64 tensor), or a float32
#: tensor (``lr=torch.tensor(1e-3)``), whose arithmetic rounds to float32 after each op.
DTYPES = ("float64", "float32")

COMMON_FIELDS: dict[str, tuple[f.Check, Any]] = {
    "begin": (f.number(), 0),  # negative: the window starts at build (MMEngine allows it)
    "end": (f.number(allow_inf=True), None),
    "by_epoch": (f.boolean, True),
    "convert_to_iter_based": (f.boolean, False),
    "verbose": (f.boolean, False),
    "last_step": (f.minus_one, -1),
    "_scope_": (f.optional(f.text), None),
}

REQUIRED = object()

# kind -> its own fields (check, default); REQUIRED marks mandatory ones.
KIND_FIELDS: dict[str, dict[str, tuple[f.Check, Any]]] = {
    "Constant": {"factor": (f.number(low=0, high=1), 1.0 / 3)},
    "Linear": {
        "start_factor": (f.number(low=0, high=1), 1.0 / 3),
        "end_factor": (f.number(low=0, high=1), 1.0),
    },
    "Exponential": {"gamma": (f.number(), REQUIRED)},
    # MMEngine takes floats for its "int" fields too (k % 2.5, a milestone of 2.0).
    "Step": {"step_size": (f.number(), REQUIRED), "gamma": (f.number(), 0.1)},
    "MultiStep": {
        "milestones": (f.sequence_of(f.number()), REQUIRED),
        "gamma": (f.number(), 0.1),
    },
    "CosineAnnealing": {
        "T_max": (f.optional(f.number()), None),
        "eta_min": (f.optional(f.number()), None),
        "eta_min_ratio": (f.optional(f.number()), None),
    },
    "Poly": {"eta_min": (f.number(), 0), "power": (f.number(), 1.0)},
    "CosineRestart": {
        "periods": (f.sequence_of(f.number(low=0), min_len=1), REQUIRED),
        "restart_weights": (f.sequence_of(f.number(), min_len=1), (1,)),
        "eta_min": (f.optional(f.number()), None),
        "eta_min_ratio": (f.optional(f.number()), None),
    },
    "OneCycle": {
        "eta_max": (f.number_or_sequence(f.number()), 0),
        "total_steps": (f.optional(f.integer(low=1)), None),
        "pct_start": (f.strict_float(low=0.0, high=1.0), 0.3),
        "anneal_strategy": (f.choice("cos", "linear"), "cos"),
        "div_factor": (f.number(), 25.0),
        "final_div_factor": (f.number(), 1e4),
        "three_phase": (f.boolean, False),
    },
    "WarmupStableDecay": {
        "warmup_iters": (f.integer(low=0), 0),
        "warmup_start_factor": (f.number(low=0, high=1), 1e-3),
        "decay_begin": (f.optional(f.integer(low=0)), None),
        "decay_iters": (f.integer(low=1), 1),
        "decay_shape": (f.choice("linear", "cosine", "sqrt"), "linear"),
        "min_ratio": (f.number(low=0, high=1), 0.0),
    },
    "ReduceOnPlateau": {
        "monitor": (f.text, "loss"),
        "rule": (f.choice("less", "greater"), "less"),
        "factor": (f.number(high=1.0, high_open=True), 0.1),
        "patience": (f.number(), 10),
        "threshold": (f.number(low=0), 1e-4),
        "threshold_rule": (f.choice("rel", "abs"), "rel"),
        "cooldown": (f.number(), 0),
        "min_value": (f.number_or_sequence(f.number()), 0.0),
        "eps": (f.number(), 1e-8),
    },
}
# Hugging Face schedules (HFLinearLR, ...): paramsched's own closed forms, see hf.py.
KIND_FIELDS.update(hf_fields(REQUIRED))
# torch.optim.lr_scheduler semantics (TorchLinearLR, ...): see torch_semantics.py.
KIND_FIELDS.update(torch_fields(REQUIRED))

# Fields multiplied by epoch_length under convert_to_iter_based.
PERIOD_FIELDS = {
    "Step": ("step_size",),
    "MultiStep": ("milestones",),
    "CosineAnnealing": ("T_max",),
    "CosineRestart": ("periods",),
    "OneCycle": ("total_steps",),
    "WarmupStableDecay": ("warmup_iters", "decay_begin", "decay_iters"),
}
PERIOD_FIELDS.update(HF_PERIOD_FIELDS)

FAMILIES = (("ParamScheduler", None), ("Momentum", "momentum"), ("LR", "lr"))


@dataclass(frozen=True)
class SchedulerSpec:
    """One built scheduler: its window and by_epoch after conversion, and its rule."""

    index: int
    type: str
    kind: str
    param: str
    by_epoch: bool
    begin: Number  # fractional only without convert_to_iter_based, as MMEngine allows
    end: Number
    rule: Rule | PlateauRule
    generic: bool = False  # a *ParamScheduler type (param_name given), not LR/Momentum

    @property
    def is_plateau(self) -> bool:
        return isinstance(self.rule, PlateauRule)


@dataclass(frozen=True)
class JobSpec:
    """A validated job: its schedulers, initial values and training length.

    ``to_dict()`` gives the canonical inputs (plain JSON); ``JobSpec.from_dict`` rebuilds
    and re-validates them, so a stored spec always means the same curves.
    """

    param_scheduler: tuple[dict[str, Any], ...]
    initial_values: tuple[dict[str, Any], ...]
    epoch_length: int | None
    max_epochs: int | None
    max_iters: int
    schedulers: tuple[SchedulerSpec, ...]
    params: tuple[str, ...]
    momentum_via_betas: bool
    semantics: int = CURRENT_SEMANTICS
    # Per group: the params held as float32 tensors (all others are float64).
    float32: tuple[tuple[str, ...], ...] = ()
    # Guardrails for live changes (not MMEngine): param -> (min or None, max or None),
    # and the largest factor a change may jump a value by without being forced.
    bounds: tuple[tuple[str, float | None, float | None], ...] = ()
    max_jump_factor: float | None = None
    # Iteration-based jobs: validation (ReduceOnPlateau decisions) every val_interval
    # iterations and after the last one, as MMEngine's IterBasedTrainLoop validates.
    val_interval: int | None = None

    @property
    def epoch_based(self) -> bool:
        return self.max_epochs is not None

    # -- validation points: where ReduceOnPlateau decisions are due ------------------
    # Decision k of an epoch-based job follows epoch k; of a job with val_interval K,
    # the validation after min((k + 1) * K, max_iters) iterations. The one place that
    # maps decision keys to iterations.
    def decisions_done(self, done: int) -> int:
        """How many validation points lie within the first ``done`` iterations (the keys
        of the decisions made by then are ``range(decisions_done(done))``)."""
        if self.epoch_based:
            return done // self.epoch_length if self.epoch_length else 0
        if self.val_interval is None:
            return 0
        if done >= self.max_iters:
            return -(-self.max_iters // self.val_interval)
        return done // self.val_interval

    def decision_at(self, done: int) -> int | None:
        """The key of the decision due after ``done`` iterations, or None (no point)."""
        if done < 1 or done > self.max_iters:
            return None
        before = self.decisions_done(done - 1)
        return before if self.decisions_done(done) > before else None

    def decision_iteration(self, key: int) -> int:
        """The iterations done when decision ``key`` is due (the inverse of decision_at)."""
        if self.epoch_based:
            return (key + 1) * (self.epoch_length or 0)
        return min((key + 1) * (self.val_interval or 0), self.max_iters)

    @property
    def num_groups(self) -> int:
        return len(self.initial_values)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "param_scheduler": [dict(c) for c in self.param_scheduler],
            "initial_values": [dict(g) for g in self.initial_values],
            "epoch_length": self.epoch_length,
            "max_epochs": self.max_epochs,
            "max_iters": None if self.epoch_based else self.max_iters,
        }
        if self.semantics != 1:  # version 1 specs keep the exact dict they were stored with
            data["semantics"] = self.semantics
        if any(self.float32):
            data["dtypes"] = [{p: "float32" for p in params} for params in self.float32]
        if self.bounds:
            data["bounds"] = {p: [lo, hi] for p, lo, hi in self.bounds}
        if self.max_jump_factor is not None:
            data["max_jump_factor"] = self.max_jump_factor
        if self.val_interval is not None:  # absent otherwise: older jobs keep their hash
            data["val_interval"] = self.val_interval
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Rebuild a stored spec; one without ``semantics`` is a version 1 job."""
        return build_job_spec(
            data["param_scheduler"],
            data["initial_values"],
            epoch_length=data.get("epoch_length"),
            max_epochs=data.get("max_epochs"),
            max_iters=data.get("max_iters"),
            bounds=data.get("bounds"),
            max_jump_factor=data.get("max_jump_factor"),
            semantics=data.get("semantics", 1),
            dtypes=data.get("dtypes"),
            val_interval=data.get("val_interval"),
        )


def check_semantics(value: Any) -> int:
    """The engine semantics version a job asks for (None: the current one)."""
    if value is None:
        return CURRENT_SEMANTICS
    if isinstance(value, bool) or not isinstance(value, int) or value not in SEMANTICS_VERSIONS:
        raise ConfigError(
            f"engine semantics version {value!r} is unknown to this server (it computes "
            f"versions {', '.join(map(str, SEMANTICS_VERSIONS))}); upgrade the server",
            field="semantics")
    return value


def _check_dtypes(raw: Any, groups: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], ...]:
    """Per group, the params held as float32 tensors (``dtypes``: one dict per group)."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or len(raw) != len(groups):
        raise ConfigError(f"must be a list with one dict per param group ({len(groups)})",
                          field="dtypes")
    out = []
    for gi, (types, group) in enumerate(zip(raw, groups, strict=True)):
        if not isinstance(types, Mapping):
            raise ConfigError("must be a dict of param -> dtype", field=f"dtypes[{gi}]")
        names = []
        for name, dtype in types.items():
            if dtype not in DTYPES:
                raise ConfigError(f"must be one of {', '.join(DTYPES)}, got {dtype!r}",
                                  field=f"dtypes[{gi}].{name}")
            if name not in group or name == "betas":
                raise ConfigError("names no numeric value of the group",
                                  field=f"dtypes[{gi}].{name}")
            if dtype == "float32":
                names.append(str(name))
        out.append(tuple(sorted(names)))
    return tuple(out) if any(out) else ()


def _guardrails(
    bounds: Any, max_jump_factor: Any
) -> tuple[tuple[tuple[str, float | None, float | None], ...], float | None]:
    out = []
    if bounds is not None:
        if not isinstance(bounds, Mapping):
            raise ConfigError("must map a param name to [min, max]", field="bounds")
        for name, pair in sorted(bounds.items()):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigError("must be [min, max] (either may be null)",
                                  field=f"bounds.{name}")
            try:
                lo, hi = (f.optional(f.number())(x) for x in pair)
            except f.Invalid as exc:
                raise ConfigError(str(exc), field=f"bounds.{name}") from None
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"min {lo} is above max {hi}", field=f"bounds.{name}")
            out.append((str(name), lo, hi))
    if max_jump_factor is not None:
        try:
            f.number(low=1)(max_jump_factor)
        except f.Invalid as exc:
            raise ConfigError(str(exc), field="max_jump_factor") from None
    return tuple(out), max_jump_factor


def split_type(type_name: Any, index: int) -> tuple[str, str | None]:
    """``"LinearLR"`` -> (``"Linear"``, ``"lr"``); generic types give param None."""
    if not isinstance(type_name, str):
        raise ConfigError("must be a scheduler type name (a string)", field="type", index=index)
    # MMEngine's registry resolves its own scope: "mmengine.LinearLR" is "LinearLR".
    # paramsched's own WarmupStableDecay and HF types are no MMEngine types: no scope.
    name = type_name.removeprefix(f"{MMENGINE_SCOPE}.")
    for suffix, param in FAMILIES:
        kind = name.removesuffix(suffix)
        if kind != name and kind in KIND_FIELDS and not (
                name != type_name and (kind == "WarmupStableDecay" or kind in HF_KINDS)):
            if (kind == "OneCycle" or kind in HF_KINDS) and param == "momentum":
                break
            return kind, param
    known = sorted(
        k + s for k in KIND_FIELDS for s, _ in FAMILIES
        if not ((k == "OneCycle" or k in HF_KINDS) and s == "Momentum")
    )
    close = difflib.get_close_matches(type_name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown scheduler type {type_name!r}{hint}", field="type", index=index,
        scheduler_type=type_name,
    )


def _validate_job(
    initial_values: Any, epoch_length: Any, max_epochs: Any, max_iters: Any
) -> tuple[tuple[dict[str, Any], ...], int | None, int | None, int]:
    if (max_epochs is None) == (max_iters is None):
        raise ConfigError(
            "give exactly one of max_epochs (epoch-based loop) or max_iters (iteration-based)",
            field="max_epochs" if max_epochs is not None else "max_iters",
        )
    checks = (("epoch_length", epoch_length), ("max_epochs", max_epochs), ("max_iters", max_iters))
    for name, value in checks:
        if value is not None:
            try:
                f.integer(low=1)(value)
            except f.Invalid as exc:
                raise ConfigError(str(exc), field=name) from None
    if max_epochs is not None:
        if epoch_length is None:
            raise ConfigError("required for an epoch-based job (max_epochs)", field="epoch_length")
        max_iters = max_epochs * epoch_length
    if not isinstance(initial_values, Sequence) or isinstance(initial_values, str | bytes):
        raise ConfigError("must be a list with one dict per param group", field="initial_values")
    if not initial_values:
        raise ConfigError("must describe at least one param group", field="initial_values")
    groups = []
    for gi, group in enumerate(initial_values):
        where = f"initial_values[{gi}]"
        if not isinstance(group, Mapping):
            raise ConfigError("must be a dict of param_group values", field=where)
        clean: dict[str, Any] = {}
        for key, value in group.items():
            if not isinstance(key, str) or not key:
                raise ConfigError("keys must be non-empty strings", field=where)
            try:
                if key == "betas":
                    clean[key] = list(f.sequence_of(f.number(), min_len=2)(value))
                else:
                    clean[key] = f.number()(value)
            except f.Invalid as exc:
                raise ConfigError(str(exc), field=f"{where}.{key}") from None
        groups.append(clean)
    return tuple(groups), epoch_length, max_epochs, int(max_iters)


def _check_fields(
    cfg: Mapping[str, Any], kind: str, generic: bool, index: int, type_name: str
) -> dict[str, Any]:
    allowed = dict(COMMON_FIELDS) | KIND_FIELDS[kind]
    if generic:
        allowed["param_name"] = (f.text, REQUIRED)
    values: dict[str, Any] = {}
    for key in cfg:
        if key == "type":
            continue
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown argument for {type_name}{hint}", field=str(key), index=index,
                scheduler_type=type_name,
            )
    for key, (check, default) in allowed.items():
        if key in cfg:
            try:
                values[key] = check(cfg[key])
            except f.Invalid as exc:
                raise ConfigError(str(exc), field=key, index=index,
                                  scheduler_type=type_name) from None
        elif default is REQUIRED:
            raise ConfigError("is required", field=key, index=index, scheduler_type=type_name)
        else:
            values[key] = default
    return values


def _reachable_steps(begin: Number, end: Number, by_epoch: bool, job: _Job) -> int:
    """How many steps of its window ``[begin, end)`` a scheduler takes in training: its
    global step runs 0..horizon (MMEngine steps every scheduler once more after the
    final iteration/epoch, and that step counts). Windows may be fractional."""
    horizon = job.loop_epochs if by_epoch else job.max_iters
    last = horizon if end > horizon else math.ceil(end) - 1
    return max(0, last - max(0, math.ceil(begin)) + 1)


@dataclass(frozen=True)
class _Job:
    groups: int
    epoch_length: int | None
    max_epochs: int | None
    max_iters: int
    semantics: int = CURRENT_SEMANTICS

    @property
    def loop_epochs(self) -> int:
        """The training loop's epochs: max_epochs, or 1 for an iteration-based loop."""
        return self.max_epochs if self.max_epochs is not None else 1


def build_job_spec(
    param_scheduler: Any,
    initial_values: Any,
    *,
    epoch_length: int | None = None,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    bounds: Mapping[str, Any] | None = None,
    max_jump_factor: float | None = None,
    semantics: int | None = None,
    dtypes: Any = None,
    val_interval: int | None = None,
) -> JobSpec:
    """Validate a job and build its schedulers, the way MMEngine's Runner would.

    ``param_scheduler``: a scheduler config dict or a list of them.
    ``initial_values``: one dict per param group with the optimizer's numeric values
    (``lr``, ``momentum`` or ``betas``, ``weight_decay``, any custom key).
    ``max_epochs`` (epoch-based loop, needs ``epoch_length``) or ``max_iters``.
    ``semantics``: the engine semantics version (None: the current one, for a new job).
    ``dtypes``: per group, ``{param: "float32"}`` for values held as float32 tensors.
    ``val_interval``: an iteration-based job's validation points (``JobSpec.val_interval``).
    """
    version = check_semantics(semantics)
    groups, epoch_length, max_epochs, total_iters = _validate_job(
        initial_values, epoch_length, max_epochs, max_iters
    )
    float32 = _check_dtypes(dtypes, groups)
    job = _Job(len(groups), epoch_length, max_epochs, total_iters, version)
    if isinstance(param_scheduler, Mapping):
        param_scheduler = [param_scheduler]
    if not isinstance(param_scheduler, Sequence) or isinstance(param_scheduler, str | bytes):
        raise ConfigError("must be a scheduler config dict or a list of them",
                          field="param_scheduler")
    has_momentum = all("momentum" in g for g in groups)
    has_betas = all("betas" in g for g in groups)
    momentum_via_betas = not has_momentum and has_betas
    # Keys each group holds as schedulers are built (momentum schedulers on betas
    # optimizers add a "momentum" key, as MMEngine does).
    keys = set.intersection(*(set(g) for g in groups))
    configs: list[dict[str, Any]] = []
    specs: list[SchedulerSpec] = []
    for index, cfg in enumerate(param_scheduler):
        if not isinstance(cfg, Mapping):
            raise ConfigError("must be a dict with a 'type'", field="", index=index)
        if "type" not in cfg:
            raise ConfigError("is required", field="type", index=index)
        type_name = cfg["type"]
        kind, family_param = split_type(type_name, index)
        values = _check_fields(cfg, kind, family_param is None, index, type_name)
        if family_param == "momentum":
            if not (has_momentum or has_betas):
                raise ConfigError(
                    "the optimizer has no 'momentum' or 'betas' in every param group",
                    field="type", index=index, scheduler_type=type_name)
            keys.add("momentum")
        param = family_param or values["param_name"]
        if param not in keys or param == "betas":
            raise ConfigError(
                f"every param group needs a numeric {param!r} value to schedule "
                f"(groups have {sorted(keys)})",
                field="param_name" if family_param is None else "type",
                index=index, scheduler_type=type_name)
        built = _build_one(index, type_name, kind, param, values, job)
        specs.append(dataclasses.replace(built, generic=family_param is None))
        configs.append(dict(cfg))
    scheduled = tuple(dict.fromkeys(s.param for s in specs))
    guard_bounds, jump = _guardrails(bounds, max_jump_factor)
    if val_interval is not None:
        try:
            f.integer(low=1)(val_interval)
        except f.Invalid as exc:
            raise ConfigError(str(exc), field="val_interval") from None
        if max_epochs is not None:
            raise ConfigError("is for iteration-based jobs (max_iters); an epoch-based job "
                              "validates at its epoch ends", field="val_interval")
    return JobSpec(
        param_scheduler=tuple(configs),
        initial_values=groups,
        epoch_length=epoch_length,
        max_epochs=max_epochs,
        max_iters=total_iters,
        schedulers=tuple(specs),
        params=scheduled,
        momentum_via_betas=momentum_via_betas,
        semantics=version,
        float32=float32,
        bounds=guard_bounds,
        max_jump_factor=jump,
        val_interval=val_interval,
    )


def _build_one(
    index: int, type_name: str, kind: str, param: str, v: dict[str, Any], job: _Job
) -> SchedulerSpec:
    def fail(field: str, reason: str) -> ConfigError:
        return ConfigError(reason, field=field, index=index, scheduler_type=type_name)

    by_epoch: bool = v["by_epoch"]
    convert: bool = v["convert_to_iter_based"]
    begin, end = v["begin"], v["end"]
    if end is None:  # torch's schedulers have no window: Torch types default to no end
        end = INF if kind in TORCH_KINDS else job.loop_epochs if by_epoch else job.max_iters
    if kind == "ReduceOnPlateau":
        if not by_epoch:
            raise fail("by_epoch", "ReduceOnPlateau only supports by_epoch=True")
        if convert:
            raise fail("convert_to_iter_based", "ReduceOnPlateau cannot be converted to iter-based")
    if convert:
        if not by_epoch:
            raise fail("convert_to_iter_based", "only by_epoch=True schedulers can be converted")
        if job.epoch_length is None:
            raise fail("convert_to_iter_based", "needs the job's epoch_length")
        length = job.epoch_length
        if end == math.inf:
            raise fail("end", "inf cannot be converted to iterations (MMEngine crashes with "
                              "OverflowError in int(end * epoch_length)); omit end or give "
                              f"{INF} (no end, kept as is)")
        begin = int(begin * length)
        if end != INF:
            end = int(end * length)
        for name in PERIOD_FIELDS.get(kind, ()):
            if isinstance(v[name], tuple):
                v[name] = tuple(x * length for x in v[name])
            elif v[name] is not None:
                v[name] = v[name] * length
        by_epoch = False
    if end <= begin:
        raise fail("end", f"must be larger than begin, got begin={begin}, end={end}")
    steps = _reachable_steps(begin, end, by_epoch, job)
    window = end - begin - 1  # MMEngine's total_iters
    rule: Rule | PlateauRule
    # A step k equal to a fractional total_iters never comes, so only whole windows
    # reach the divisions at k == total_iters.
    whole = float(window).is_integer()
    if kind == "Constant":
        if v["factor"] == 0 and whole and 1 <= window <= steps - 1:
            raise fail("factor", "0 would divide by zero when the window ends "
                                 "(MMEngine crashes with ZeroDivisionError)")
        rule = ConstantRule(v["factor"], window)
    elif kind == "Linear":
        if v["start_factor"] == 0 and steps >= 2:
            if not math.isfinite(window):  # inf * 0: MMEngine's value is NaN from then on
                raise fail("start_factor", "0 with an infinite end makes the value NaN at the "
                                           "scheduler's second step (inf * 0); MMEngine "
                                           "would go on with a NaN value")
            raise fail("start_factor", "0 would divide by zero at the scheduler's second step "
                                       "(MMEngine crashes with ZeroDivisionError)")
        rule = LinearRule(v["start_factor"], v["end_factor"], window)
    elif kind == "Exponential":
        rule = ExponentialRule(v["gamma"])
    elif kind == "Step":
        if v["step_size"] == 0 and steps >= 2:
            raise fail("step_size", "0 takes a modulo by zero at the window's second step "
                                    "(MMEngine crashes with ZeroDivisionError)")
        rule = StepRule(v["step_size"], v["gamma"])
    elif kind == "MultiStep":
        rule = MultiStepRule(Counter(v["milestones"]), v["gamma"])
    elif kind == "CosineAnnealing":
        _one_eta_min(v, fail, required=False)
        t_max = v["T_max"] or (end - begin)
        if not math.isfinite(math.pi * max(steps, 1) / t_max):
            raise fail("T_max", f"{t_max!r} is so small that pi*k/T_max overflows (MMEngine "
                                "crashes with a math domain error)")
        rule = CosineAnnealingRule(t_max, v["eta_min"], v["eta_min_ratio"])
    elif kind == "Poly":
        if v["power"] < 0 and whole and 1 <= window <= steps - 1:
            raise fail("power", "a negative power divides by zero at the window's last step "
                                "(MMEngine crashes with ZeroDivisionError)")
        if job.semantics >= 2:
            _poly_stays_real(v["power"], window, steps, fail)
        rule = PolyRule(v["eta_min"], v["power"], window)
    elif kind == "CosineRestart":
        _one_eta_min(v, fail, required=True)
        periods, weights = v["periods"], v["restart_weights"]
        if len(periods) != len(weights):
            raise fail("restart_weights", f"must have one weight per period ({len(periods)}), "
                                          f"got {len(weights)}")
        cumulative = tuple(sum(periods[: i + 1]) for i in range(len(periods)))
        rule = CosineRestartRule(periods, cumulative, weights, v["eta_min"], v["eta_min_ratio"])
    elif kind == "OneCycle":
        rule = _one_cycle(v, param, begin, end, steps, job, fail)
    elif kind == "WarmupStableDecay":
        rule = WarmupStableDecayRule(v["warmup_iters"], v["warmup_start_factor"],
                                     v["decay_begin"], v["decay_iters"], v["decay_shape"],
                                     v["min_ratio"])
    elif kind in HF_KINDS:
        rule = build_hf_rule(kind, v, begin, end, steps, fail)
    elif kind in TORCH_KINDS:
        rule = build_torch_rule(kind, param, v, begin, by_epoch, job.groups, fail)
    else:
        rule = _plateau(v, job, fail)
    return SchedulerSpec(index, type_name, kind, param, by_epoch, begin, end, rule)


def _poly_stays_real(power: Number, window: Number, steps: int, fail: Any) -> None:
    """Refuse a Poly whose factor ``(1 - 1/(T - k + 1))**power`` turns complex at a step k
    of the run (a fractional window makes the base negative at ``k = floor(T) + 1``; a
    non-integer power of it is complex). MMEngine writes the complex number into the param
    group: an ``lr`` crashes torch's step, any other key silently holds a complex value.
    paramsched's values are real numbers, so both are refused here, naming ``power``."""
    if float(power).is_integer() or not math.isfinite(window) or float(window).is_integer():
        return
    k = math.floor(window) + 1  # the one step whose base lies in (-inf, 0)
    if 1 <= k <= steps - 1:
        raise fail("power", f"{power!r} of the negative base 1 - 1/(T-k+1) at step {k} "
                            f"(T = end - begin - 1 = {window!r}) is a complex number; MMEngine "
                            "crashes on it for lr and stores a complex value for other keys")


def _one_eta_min(v: dict[str, Any], fail: Any, *, required: bool) -> None:
    if v["eta_min"] is not None and v["eta_min_ratio"] is not None:
        raise fail("eta_min_ratio", "give either eta_min or eta_min_ratio, not both")
    if v["eta_min"] is None and v["eta_min_ratio"] is None:
        if required:
            raise fail("eta_min", "give one of eta_min or eta_min_ratio")
        v["eta_min"] = 0.0


def _per_group(value: Any, name: str, job: _Job, fail: Any) -> tuple[float, ...]:
    if isinstance(value, tuple):
        if len(value) != job.groups:
            raise fail(name, f"must have one value per param group ({job.groups}), "
                             f"got {len(value)}")
        return value
    return (value,) * job.groups


def _one_cycle(
    v: dict[str, Any], param: str, begin: int, end: int, steps: int, job: _Job, fail: Any
) -> OneCycleRule:
    if param != "lr":
        raise fail("param_name", f"OneCycle only schedules 'lr', got {param!r}")
    for name in ("div_factor", "final_div_factor"):
        if v[name] == 0:
            raise fail(name, "must not be 0 (division by zero)")
    max_values = _per_group(v["eta_max"], "eta_max", job, fail)
    # An explicit total_steps must be a positive int (checked with the field); the
    # default end - begin may be fractional, which MMEngine accepts.
    total = v["total_steps"] if v["total_steps"] is not None else end - begin
    last_step = steps - 1
    if last_step > total:
        raise fail("total_steps", f"{total} is smaller than the {last_step + 1} steps the "
                                  "scheduler takes in its window (MMEngine raises 'Tried to step')")
    pct = v["pct_start"]
    if v["three_phase"]:
        ends = [float(pct * total) - 1, float(2 * pct * total) - 2, total - 1]
        keys = [("initial_lr", "max_lr"), ("max_lr", "initial_lr"), ("initial_lr", "min_lr")]
    else:
        ends = [float(pct * total) - 1, total - 1]
        keys = [("initial_lr", "max_lr"), ("max_lr", "min_lr")]
    # A phase of zero length divides by zero if any reachable step falls into it.
    start: float = 0
    for i, phase_end in enumerate(ends):
        earlier = ends[:i]
        edge = max(earlier) if earlier else -1.0
        # An infinite total_steps (end=inf) makes the later phases unreachable.
        first: float = max(0, math.floor(edge) + 1) if math.isfinite(edge) else math.inf
        last: float = last_step
        if i < len(ends) - 1 and math.isfinite(phase_end):
            last = min(last_step, math.floor(phase_end))
        if phase_end - start == 0 and first <= last:
            raise fail("pct_start", f"{pct} makes phase {i + 1} of {total} steps empty, which "
                                    "divides by zero (MMEngine crashes with ZeroDivisionError)")
        start = phase_end
    phases = tuple(OnePhase(e, s, t) for e, (s, t) in zip(ends, keys, strict=True))
    return OneCycleRule(total, phases, v["anneal_strategy"] == "cos", max_values,
                        v["div_factor"], v["final_div_factor"])


def _plateau(v: dict[str, Any], job: _Job, fail: Any) -> PlateauRule:
    min_values = _per_group(v["min_value"], "min_value", job, fail)
    return PlateauRule(
        monitor=v["monitor"], rule=v["rule"], factor=v["factor"], patience=v["patience"],
        threshold=v["threshold"], threshold_rule=v["threshold_rule"], cooldown=v["cooldown"],
        min_values=tuple(min_values), eps=v["eps"],
    )
