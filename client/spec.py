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

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from paramsched.api.v1 import scheduler_pb2

from .jobspec import Bounds, config_json, job_spec
from .optim import initial_values

__all__ = ["build_spec", "config_json", "dtypes"]


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
    bounds: Bounds | None = None,
    max_jump_factor: float | None = None,
) -> scheduler_pb2.JobSpec:
    """The spec that creates a job from this optimizer's current param-group values."""
    if (max_epochs is None) == (max_iters is None):
        raise ValueError(
            "give exactly one of max_epochs= (epoch-based loop) or max_iters= (iteration-based)"
        )
    if max_epochs is not None and epoch_length is None:
        raise ValueError("an epoch-based job (max_epochs=) needs epoch_length= (len(loader))")
    return job_spec(param_scheduler, initial_values(optimizer), dtypes=dtypes(optimizer),
                    epoch_length=epoch_length, max_epochs=max_epochs, max_iters=max_iters,
                    bounds=bounds, max_jump_factor=max_jump_factor)
