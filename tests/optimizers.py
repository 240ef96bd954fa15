"""Real torch optimizers for client tests, built from param-group values as the oracle
builds them, and what their groups hold."""

from __future__ import annotations

from typing import Any

import torch


def make_optimizer(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam (betas), one tiny tensor per group."""
    param_groups: list[dict[str, Any]] = []
    for values in groups:
        group: dict[str, Any] = {"params": [torch.nn.Parameter(torch.zeros(2))]}
        group.update({k: tuple(v) if k == "betas" else v for k, v in values.items()})
        param_groups.append(group)
    defaults = {k: v for k, v in param_groups[0].items() if k != "params"}
    if "betas" in groups[0]:
        return torch.optim.Adam(param_groups, **defaults)
    return torch.optim.SGD(param_groups, **defaults)


def snapshot(optimizer: torch.optim.Optimizer, names: list[str]) -> list[dict[str, float]]:
    """What each group holds now; Adam-style momentum is ``betas[0]``."""
    betas = "momentum" not in optimizer.defaults and "betas" in optimizer.defaults
    return [
        {n: float(g["betas"][0] if n == "momentum" and betas else g[n]) for n in names}
        for g in optimizer.param_groups
    ]
