"""Turning ``attach(...)`` arguments into the wire ``JobSpec``.

The config travels as JSON (MMEngine's checks tell ints from floats, and JSON keeps
them apart); tuples become lists and numpy/torch scalars become numbers, so a config
read from an MMEngine ``Config`` file works unchanged. Only the obvious mistakes are
caught here; the server validates everything and names the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from paramsched.api.v1 import scheduler_pb2

from .optim import initial_values


def _to_json(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    item = getattr(value, "item", None)
    if callable(item):  # numpy scalars
        return item()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot send {type(value).__name__} {value!r} in a param_scheduler config")


def config_json(param_scheduler: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """The MMEngine ``param_scheduler`` config (a dict or a list of dicts) as JSON."""
    if isinstance(param_scheduler, str | bytes):
        raise TypeError("param_scheduler must be a dict or a list of dicts, not a string")
    if isinstance(param_scheduler, Mapping):
        cfg: Any = dict(param_scheduler)
    elif isinstance(param_scheduler, Sequence):
        cfg = [dict(c) if isinstance(c, Mapping) else c for c in param_scheduler]
    else:
        raise TypeError(
            f"param_scheduler must be a dict or a list of dicts, got {type(param_scheduler)}"
        )
    return json.dumps(cfg, default=_to_json, sort_keys=False, allow_nan=False)


def build_spec(
    optimizer: torch.optim.Optimizer,
    param_scheduler: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    epoch_length: int | None,
    max_epochs: int | None,
    max_iters: int | None,
) -> scheduler_pb2.JobSpec:
    """The spec that creates a job from this optimizer's current param-group values."""
    if (max_epochs is None) == (max_iters is None):
        raise ValueError(
            "give exactly one of max_epochs= (epoch-based loop) or max_iters= (iteration-based)"
        )
    if max_epochs is not None and epoch_length is None:
        raise ValueError("an epoch-based job (max_epochs=) needs epoch_length= (len(loader))")
    spec = scheduler_pb2.JobSpec(param_scheduler_json=config_json(param_scheduler))
    for group in initial_values(optimizer):
        message = spec.initial_values.add()
        for key, value in group.items():
            if key == "betas":
                message.betas.extend(value)
            else:
                message.values[key] = value
    if epoch_length is not None:
        spec.epoch_length = int(epoch_length)
    if max_epochs is not None:
        spec.max_epochs = int(max_epochs)
    if max_iters is not None:
        spec.max_iters = int(max_iters)
    return spec
