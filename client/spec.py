"""Turning ``attach(...)`` arguments into the wire ``JobSpec``.

The config travels as JSON (MMEngine's checks tell ints from floats, and JSON keeps
them apart); tuples become lists and numpy/torch scalars become numbers, so a config
read from an MMEngine ``Config`` file works unchanged; NaN and infinities travel as
the JSON tokens ``NaN``/``Infinity``. Only what cannot be sent is caught here (naming
the scheduler's index, type and field); the server validates everything. A value held
as a float32 tensor (``lr=torch.tensor(1e-3)``) is sent with its dtype, since MMEngine
chains its arithmetic in float32.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from paramsched.api.v1 import scheduler_pb2

from .optim import initial_values


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (tuples as lists, tensors and numpy scalars as numbers);
    ``where`` names it in the error (``param_scheduler[1] (StepLR): field 'gamma'``)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, Mapping | list | tuple | torch.Tensor) and (
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


def dtypes(optimizer: torch.optim.Optimizer) -> list[dict[str, str]]:
    """Per group, the values held as float32 tensors (MMEngine chains their arithmetic
    in float32, so the server must too)."""
    out = []
    for group in optimizer.param_groups:
        out.append({key: "float32" for key, value in group.items() if key != "params"
                    and isinstance(value, torch.Tensor) and value.dtype == torch.float32
                    and value.numel() == 1})
    return out


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
    for group, types in zip(initial_values(optimizer), dtypes(optimizer), strict=True):
        message = spec.initial_values.add()
        for key, value in group.items():
            if key == "betas":
                message.betas.extend(value)
            else:
                message.values[key] = value
        message.dtypes.update({k: v for k, v in types.items() if k in group})
    if epoch_length is not None:
        spec.epoch_length = int(epoch_length)
    if max_epochs is not None:
        spec.max_epochs = int(max_epochs)
    if max_iters is not None:
        spec.max_iters = int(max_iters)
    return spec
