"""What the client reads from and writes to a torch optimizer's ``param_groups``.

Reading: the initial values a job is created from (every numeric key of every group
except ``params``; single-element tensors via ``.item()``; ``betas``).

Writing: the hot path. One ``Writer`` per (group, param) decides how to store a value:
plain keys are replaced, tensor-valued keys (``lr=torch.tensor(...)`` for capturable or
fused optimizers and CUDA graphs) are filled in place so every captured reference
stays valid, and Adam-style momentum goes to ``betas[0]`` and ``momentum`` both, as
MMEngine's momentum schedulers do. The writer looks the group up by index on every
call because ``optimizer.load_state_dict`` replaces the group dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from .errors import AttachError

Group = dict[str, Any]


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a numeric hyperparameter, else None (flags, objects)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value.item())
    return None


def _momentum_is_mirror(optimizer: torch.optim.Optimizer) -> bool:
    """Adam-style optimizers: a ``momentum`` key is MMEngine's mirror of ``betas[0]``.

    MMEngine picks betas when ``momentum`` is not among the optimizer's defaults and
    ``betas`` is; a mirror left by an earlier attach must not turn the job into an
    SGD-style one.
    """
    defaults = getattr(optimizer, "defaults", {})
    return "momentum" not in defaults and "betas" in defaults


def initial_values(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """One dict per param group: every numeric value (floats) and ``betas`` (a list)."""
    skip_momentum = _momentum_is_mirror(optimizer)
    groups: list[dict[str, Any]] = []
    for index, group in enumerate(optimizer.param_groups):
        values: dict[str, Any] = {}
        for key, value in group.items():
            if key == "params" or (key == "momentum" and skip_momentum):
                continue
            if key == "betas":
                if isinstance(value, Sequence) and all(_number(b) is not None for b in value):
                    values[key] = [_number(b) for b in value]
                continue
            number = _number(value)
            if number is None:
                continue
            if not math.isfinite(number):
                raise AttachError(f"optimizer.param_groups[{index}][{key!r}] is {number}")
            values[key] = number
        groups.append(values)
    return groups


class Writer(NamedTuple):
    """Where one value of a plan row goes: ``optimizer.param_groups[group][param]``."""

    group: int
    param: str
    betas: bool  # Adam-style momentum: betas[0] (and the ``momentum`` mirror)


def write_value(group: Group, param: str, betas: bool, value: float) -> None:
    """Store one value, the careful way (tensors in place, betas as a new tuple)."""
    if betas:
        beta0, beta1 = group["betas"]
        if isinstance(beta0, torch.Tensor):
            _fill(beta0, value)
        else:
            group["betas"] = (value, beta1)
    current = group.get(param)
    if isinstance(current, torch.Tensor):
        _fill(current, value)
    else:
        group[param] = value


def _fill(tensor: torch.Tensor, value: float) -> None:
    """In place, so CUDA graphs and fused kernels that captured the tensor see the value."""
    with torch.no_grad():
        tensor.fill_(value)


def writers(
    optimizer: torch.optim.Optimizer,
    params: Sequence[str],
    num_groups: int,
    momentum_via_betas: bool,
    job_id: str,
) -> list[Writer]:
    """The writers for one plan row, in the wire order (group-major, then param).

    Checks that the optimizer fits the job: same number of param groups, and every
    scheduled param present in every group (``betas`` for Adam-style momentum).
    """
    groups = optimizer.param_groups
    if len(groups) != num_groups:
        raise AttachError(
            f"job {job_id!r} schedules {num_groups} param group(s) but the optimizer has "
            f"{len(groups)}; attach an optimizer built with the same param groups"
        )
    out: list[Writer] = []
    for g, group in enumerate(groups):
        for param in params:
            betas = param == "momentum" and momentum_via_betas
            needed = "betas" if betas else param
            if needed not in group:
                raise AttachError(
                    f"job {job_id!r} schedules {param!r} but optimizer.param_groups[{g}] has no "
                    f"{needed!r} (keys: {sorted(k for k in group if k != 'params')})"
                )
            out.append(Writer(g, param, betas))
    return out


def apply_row(optimizer: torch.optim.Optimizer, row_writers: Sequence[Writer], row: Any) -> None:
    """Write one plan row into the optimizer: the per-iteration hot path.

    A float replaced by a float is a plain dict store; everything else (tensors,
    betas, ints) goes through ``write_value``.
    """
    groups = optimizer.param_groups
    for (g, param, betas), value in zip(row_writers, row, strict=True):
        group = groups[g]
        if betas or group.get(param).__class__ is not float:
            write_value(group, param, betas, value)
        else:
            group[param] = value


def read_values(
    optimizer: torch.optim.Optimizer, params: Sequence[str], momentum_via_betas: bool
) -> list[dict[str, float]]:
    """What the optimizer holds now, per group (for tests and ``handle.values`` checks)."""
    out: list[dict[str, float]] = []
    for group in optimizer.param_groups:
        values: dict[str, float] = {}
        for param in params:
            raw = group["betas"][0] if param == "momentum" and momentum_via_betas else group[param]
            number = _number(raw)
            values[param] = float("nan") if number is None else number
        out.append(values)
    return out


def metrics_dict(metrics: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Validation metrics as ``{str: float}`` (tensors and numpy scalars converted)."""
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"metric names must be strings, got {key!r}")
        if isinstance(value, torch.Tensor):
            value = value.item()
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {key!r} must be a number, got {value!r}") from None
    return out
