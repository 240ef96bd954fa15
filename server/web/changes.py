"""The dashboard's change forms (set, scale, hold, decay, rewarm, extend) as changes.

Each form is parsed once, at the boundary, into a ``ChangeRequest``: the change dict
``SchedulerService.reschedule`` takes (the same fields as ``RescheduleJobRequest``)
plus how to run it. The forms are the CLI's convenience commands (docs/CLI.md):

* ``set``    param to ``value`` from s on (``replace`` with a start value);
* ``scale``  the remaining curve of param by ``factor`` (``multiply``);
* ``hold``   param at the value in force at s (``replace`` with no schedulers);
* ``decay``  param to ``to`` over ``over`` iterations, ``shape`` cosine or linear, then
  held (``replace`` with one CosineAnnealing/Poly param scheduler);
* ``rewarm`` a factor from ``from_factor`` back to 1 over ``over`` iterations
  (``multiply`` with one LinearParamScheduler);
* ``extend`` the remaining curve resampled onto ``max_iters`` (``stretch``);
* ``reschedule`` the general form: ``mode``, ``param_scheduler``, ``params``,
  ``start_values``, ``max_iters`` as given.

Every form also takes ``groups`` (default: all), ``from_iteration`` (default: the
earliest iteration no plan covers), ``reason``, ``force`` and ``dry_run`` (default
true: nothing changes unless a request says ``"dry_run": false``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument

KINDS = ("set", "scale", "hold", "decay", "rewarm", "extend", "reschedule")
MODES = ("replace", "multiply", "stretch")
MAX_PREVIEW_ITERATIONS = 100_000  # the service's limit on one dry run's values


@dataclass(frozen=True)
class ChangeRequest:
    kind: str
    change: dict[str, Any]
    dry_run: bool
    force: bool
    reason: str
    preview_points: int


def _number(body: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"must be a finite number, got {value!r}", field=key)
    if positive and value <= 0:
        raise InvalidArgument(f"must be > 0, got {value!r}", field=key)
    return float(value)


def _count(body: Mapping[str, Any], key: str, *, required: bool = True,
           minimum: int = 1) -> int | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(f"must be an integer >= {minimum}, got {value!r}", field=key)
    return value


def _param(body: Mapping[str, Any]) -> str:
    value = body.get("param")
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"must name a param_groups key (lr, momentum...), got {value!r}",
                              field="param")
    return value


def _strings(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument("must be a list of strings", field=key)
    return value


def _decay(body: Mapping[str, Any]) -> dict[str, Any]:
    param, to, over = _param(body), _number(body, "to"), _count(body, "over")
    assert over is not None
    shape = body.get("shape", "cosine")
    if shape == "cosine":
        config = {"type": "CosineAnnealingParamScheduler", "param_name": param,
                  "T_max": over, "eta_min": to, "by_epoch": False, "end": over + 1}
    elif shape == "linear":
        config = {"type": "PolyParamScheduler", "param_name": param, "eta_min": to,
                  "power": 1.0, "by_epoch": False, "end": over + 1}
    else:
        raise InvalidArgument(f"must be 'cosine' or 'linear', got {shape!r}", field="shape")
    return {"mode": "replace", "params": [param], "param_scheduler": [config]}


def _rewarm(body: Mapping[str, Any]) -> dict[str, Any]:
    param, over = _param(body), _count(body, "over")
    assert over is not None
    config = {"type": "LinearParamScheduler", "param_name": param,
              "start_factor": _number(body, "from_factor", positive=True), "end_factor": 1.0,
              "by_epoch": False, "end": over + 1}
    return {"mode": "multiply", "params": [param], "param_scheduler": [config]}


def _general(body: Mapping[str, Any]) -> dict[str, Any]:
    mode = body.get("mode", "replace")
    if mode not in MODES:
        raise InvalidArgument(f"must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    configs = body.get("param_scheduler") or []
    if isinstance(configs, dict):
        configs = [configs]
    if not isinstance(configs, list):
        raise InvalidArgument("must be a list of scheduler configs", field="param_scheduler")
    start_values = body.get("start_values") or {}
    if not isinstance(start_values, dict):
        raise InvalidArgument("must be an object of param -> number", field="start_values")
    return {"mode": mode, "params": _strings(body, "params"), "param_scheduler": configs,
            "start_values": {k: _number(start_values, k) for k in start_values},
            "max_iters": _count(body, "max_iters", required=False)}


BUILDERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "set": lambda b: {"mode": "replace", "params": [_param(b)],
                      "start_values": {_param(b): _number(b, "value")}},
    "scale": lambda b: {"mode": "multiply", "params": [_param(b)],
                        "start_values": {_param(b): _number(b, "factor", positive=True)}},
    "hold": lambda b: {"mode": "replace", "params": [_param(b)]},
    "decay": _decay,
    "rewarm": _rewarm,
    "extend": lambda b: {"mode": "stretch", "max_iters": _count(b, "max_iters")},
    "reschedule": _general,
}


def parse_change(body: Any) -> ChangeRequest:
    """A change form (a JSON object) as a ``ChangeRequest``; InvalidArgument names the field."""
    if not isinstance(body, Mapping):
        raise InvalidArgument("the request body must be a JSON object", field="body")
    kind = body.get("kind")
    if kind not in BUILDERS:
        raise InvalidArgument(f"must be one of {', '.join(KINDS)}, got {kind!r}", field="kind")
    change: dict[str, Any] = {"mode": "replace", "param_scheduler": [], "params": [],
                              "groups": [], "start_values": {}, "max_iters": None,
                              "from_iteration": None}
    change.update(BUILDERS[kind](body))
    groups = body.get("groups") or []
    if not isinstance(groups, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in groups):
        raise InvalidArgument("must be a list of param group indexes", field="groups")
    change["groups"] = groups
    change["from_iteration"] = _count(body, "from_iteration", required=False, minimum=0)
    dry_run, force = body.get("dry_run", True), body.get("force", False)
    for key, value in (("dry_run", dry_run), ("force", force)):
        if not isinstance(value, bool):
            raise InvalidArgument(f"must be true or false, got {value!r}", field=key)
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidArgument("must be a string", field="reason")
    points = _count(body, "preview_points", required=False) or 2000
    return ChangeRequest(kind, change, dry_run, force, reason, min(points, 10_000))
