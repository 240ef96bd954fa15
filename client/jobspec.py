"""The wire ``JobSpec`` from plain Python values, without torch.

``attach`` reads the initial values from a torch optimizer (``spec.build_spec``);
``Client.preview`` and tools take them as dicts. Both end up in a spec message that
this module fills: the config as JSON, the groups' values, the length, the guardrails.
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


def job_spec(
    param_scheduler: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    initial_values: Sequence[Mapping[str, Any]],
    *,
    epoch_length: int | None = None,
    max_epochs: int | None = None,
    max_iters: int | None = None,
    bounds: Bounds | None = None,
    max_jump_factor: float | None = None,
) -> scheduler_pb2.JobSpec:
    """A spec from a config and the groups' initial values (``[{"lr": 0.1, ...}]``;
    ``"betas": (b1, b2)`` for Adam-style optimizers)."""
    if isinstance(param_scheduler, str | bytes):
        raise TypeError("param_scheduler must be a dict or a list of dicts, not a string")
    config: Any = (dict(param_scheduler) if isinstance(param_scheduler, Mapping)
                   else [dict(c) for c in param_scheduler])
    spec = scheduler_pb2.JobSpec(param_scheduler_json=json.dumps(config, allow_nan=False))
    for group in initial_values:
        message = spec.initial_values.add()
        for key, value in group.items():
            if key == "betas":
                message.betas.extend(float(v) for v in value)
            else:
                message.values[key] = float(value)
    if epoch_length is not None:
        spec.epoch_length = int(epoch_length)
    if max_epochs is not None:
        spec.max_epochs = int(max_epochs)
    if max_iters is not None:
        spec.max_iters = int(max_iters)
    return set_guardrails(spec, bounds, max_jump_factor)
