"""The wire ``JobSpec`` from plain Python values, without torch.

``attach`` reads the initial values from a torch optimizer (``spec.build_spec``);
``Client.preview`` and tools take them as dicts. Both end up in the one spec message
this module fills: the config as JSON, the groups' values, the length, the guardrails.

The config travels as JSON (MMEngine's checks tell ints from floats, and JSON keeps
them apart); tuples become lists and numpy/torch scalars become numbers, so a config
read from an MMEngine ``Config`` file works unchanged; NaN and infinities travel as
the JSON tokens ``NaN``/``Infinity``. Only what cannot be sent is caught here (naming
the scheduler's index, type and field); the server validates everything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from paramsched.api.v1 import scheduler_pb2

Bounds = Mapping[str, tuple[float | None, float | None] | Sequence[float | None]]


def set_guardrails(spec: scheduler_pb2.JobSpec, bounds: Bounds | None,
                   max_jump_factor: float | None) -> scheduler_pb2.JobSpec:
    """Put the guardrails for later changes into ``spec`` (and return it).

    ``bounds``: ``{param: (low, high)}``, either side None for open; every value a
    change produces must stay within them. ``max_jump_factor``: a change may not move a
    value at its first iteration by more than this factor (either way) unless forced.
    The server validates both and names the field it refuses.
    """
    for name, pair in (bounds or {}).items():
        if not isinstance(name, str) or isinstance(pair, str | bytes) or len(pair) != 2:
            raise ValueError(f"bounds[{name!r}] must be a (low, high) pair, got {pair!r}")
        low, high = pair
        for side, value in (("low", low), ("high", high)):
            if value is not None and not (isinstance(value, int | float)
                                          and math.isfinite(value)):
                raise ValueError(f"bounds[{name!r}] {side} must be a finite number or None, "
                                 f"got {value!r}")
        if low is not None and high is not None and low > high:
            raise ValueError(f"bounds[{name!r}]: low {low} > high {high}")
        message = spec.bounds[name]
        if low is not None:
            message.min = float(low)
        if high is not None:
            message.max = float(high)
    if max_jump_factor is not None:
        spec.max_jump_factor = float(max_jump_factor)
    return spec


def set_val_interval(spec: scheduler_pb2.JobSpec,
                     val_interval: int | None) -> scheduler_pb2.JobSpec:
    """Put an iteration-based job's validation points into ``spec`` (and return it):
    a ReduceOnPlateau decision is due after every ``val_interval`` iterations and after
    the last one (MMEngine's ``IterBasedTrainLoop``, HF ``eval_steps``, Lightning
    ``val_check_interval`` in steps); ``handle.record_validation`` reports it."""
    if val_interval is None:
        return spec
    if isinstance(val_interval, bool) or not isinstance(val_interval, int) or val_interval < 1:
        raise ValueError(f"val_interval must be an integer >= 1, got {val_interval!r}")
    if spec.HasField("max_epochs"):
        raise ValueError("val_interval is for iteration-based jobs (max_iters=); an "
                         "epoch-based job validates at its epoch ends (handle.end_epoch)")
    spec.val_interval = val_interval
    return spec


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (tuples as lists, tensors and numpy scalars as numbers);
    ``where`` names it in the error (``param_scheduler[1] (StepLR): field 'gamma'``)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    item, numel = getattr(value, "item", None), getattr(value, "numel", None)
    if callable(item) and callable(numel):  # a torch tensor (not imported here)
        if numel() == 1:
            return item()
    elif callable(item) and not isinstance(value, Mapping | list | tuple) and (
            getattr(value, "size", 1) == 1):  # numpy scalars
        return item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: cannot send {type(value).__name__} {value!r} in a "
                    "param_scheduler config")


def config_json(param_scheduler: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """The MMEngine ``param_scheduler`` config (a dict or a list of dicts) as JSON.

    NaN and infinities travel as the JSON tokens ``NaN``/``Infinity``/``-Infinity``
    (Python's ``json`` default): the server allows ``end=float('inf')`` and names the
    scheduler, type and field of any other non-finite number.
    """
    if isinstance(param_scheduler, str | bytes):
        raise TypeError("param_scheduler must be a dict or a list of dicts, not a string")
    if isinstance(param_scheduler, Mapping):
        cfg: Any = _config(param_scheduler, 0)
    elif isinstance(param_scheduler, Sequence):
        cfg = [_config(c, i) if isinstance(c, Mapping) else c
               for i, c in enumerate(param_scheduler)]
    else:
        raise TypeError(
            f"param_scheduler must be a dict or a list of dicts, got {type(param_scheduler)}"
        )
    try:
        return json.dumps(cfg, sort_keys=False)
    except (TypeError, ValueError) as exc:  # a non-dict item: the server names it
        raise TypeError(f"param_scheduler cannot be sent as JSON: {exc}") from None


def _config(cfg: Mapping[str, Any], index: int) -> dict[str, Any]:
    kind = cfg.get("type")
    out = {}
    for key, value in cfg.items():
        where = f"param_scheduler[{index}] ({kind}): field '{key}'"
        out[str(key)] = _plain(value, where)
    return out


def job_spec(
    param_scheduler: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    initial_values: Sequence[Mapping[str, Any]],
    *,
    epoch_length: int | None = None,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    bounds: Bounds | None = None,
    max_jump_factor: float | None = None,
    dtypes: Sequence[Mapping[str, str]] | None = None,
    val_interval: int | None = None,
) -> scheduler_pb2.JobSpec:
    """A spec from a config and the groups' initial values (``[{"lr": 0.1, ...}]``;
    ``"betas": (b1, b2)`` for Adam-style optimizers); ``dtypes``: per group, the values
    held as float32 tensors (``{"lr": "float32"}``); ``val_interval``: see
    ``set_val_interval``."""
    spec = scheduler_pb2.JobSpec(param_scheduler_json=config_json(param_scheduler))
    for g, group in enumerate(initial_values):
        message = spec.initial_values.add()
        for key, value in group.items():
            if key == "betas":
                message.betas.extend(float(v) for v in value)
            else:
                message.values[key] = float(value)
        if dtypes is not None:
            message.dtypes.update({k: v for k, v in dtypes[g].items() if k in group})
    if epoch_length is not None:
        spec.epoch_length = int(epoch_length)
    if max_epochs is not None:
        spec.max_epochs = int(max_epochs)
    if max_iters is not None:
        spec.max_iters = int(max_iters)
    set_val_interval(spec, val_interval)
    return set_guardrails(spec, bounds, max_jump_factor)
