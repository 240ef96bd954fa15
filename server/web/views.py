"""The dashboard's JSON: job summaries, curves and audit entries, built from the
service's views (``JobView``, ``Plan``, audit dicts) and nothing else.

A job's state, in one word (precedence in this order):

* ``fenced``: this server refused reports of the job's ranks recently (ranks of an
  older generation or incarnation are still running: stop them);
* ``waiting``: the furthest rank is at an epoch end whose ReduceOnPlateau decision is
  not recorded yet (every rank blocks until a rank reports that epoch's metrics);
* ``finished``: every rank reported the last iteration;
* ``running``: some rank has progress; ``new``: no rank has reported yet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..service import JobView, Plan
from ..service.pages import Page

FENCE_WINDOW_SECONDS = 600.0


class FenceLog:
    """Refused (fenced) reports per job, as this process saw them (a ``ServiceEvents``
    observer, chained in front of the metrics)."""

    def __init__(self, inner: Any, window: float = FENCE_WINDOW_SECONDS) -> None:
        self.inner = inner
        self.window = window
        self._fenced: dict[str, tuple[int, float]] = {}

    def plan_issued(self, job_id: str, iterations: int) -> None:
        self.inner.plan_issued(job_id, iterations)

    def job_reported(self, job_id: str) -> None:
        self.inner.job_reported(job_id)

    def report_fenced(self, job_id: str) -> None:
        count, _ = self._fenced.get(job_id, (0, 0.0))
        self._fenced[job_id] = (count + 1, time.time())
        if len(self._fenced) > 10_000:  # bounded: forget the oldest
            oldest = min(self._fenced, key=lambda j: self._fenced[j][1])
            del self._fenced[oldest]
        self.inner.report_fenced(job_id)

    def recent(self, job_id: str) -> dict[str, Any] | None:
        found = self._fenced.get(job_id)
        if found is None or found[1] < time.time() - self.window:
            return None
        return {"count": found[0], "last_time": found[1]}


def finite(value: Any) -> Any:
    """JSON has no NaN or infinities: they travel as the strings "NaN", "Infinity"..."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def frontier(view: JobView) -> int:
    """The iteration whose values are in force now: the furthest rank's, within training."""
    progress = view.record.progress
    return min(max(progress.values(), default=0), view.max_iters)


def curves(plans: Sequence[Plan], params: Sequence[str], num_groups: int) -> dict[str, Any]:
    """Plans (consecutive, or pages of every ``stride``-th iteration) as ``iterations``
    + per param, per group, values."""
    iterations: list[int] = []
    values: dict[str, list[list[Any]]] = {p: [[] for _ in range(num_groups)] for p in params}
    for plan in plans:
        stride = plan.stride if isinstance(plan, Page) else 1
        for offset, step in enumerate(plan.values):
            iterations.append(plan.start + offset * stride)
            for g, group in enumerate(step[:num_groups]):
                for p in params:
                    values[p][g].append(finite(group.get(p)))
    return {"iterations": iterations, "params": list(params), "num_groups": num_groups,
            "values": values}


def last_change(view: JobView) -> dict[str, Any] | None:
    changes = view.record.changes or []
    if not changes:
        return None
    change = changes[-1]
    return {"number": view.record.num_changes, "from_iteration": change.get("from_iteration"),
            "mode": change.get("mode"), "params": list(change.get("params") or []),
            "max_iters": change.get("max_iters")}


def state_of(view: JobView, now: Plan | None, fenced: dict[str, Any] | None) -> tuple[str, str]:
    progress = view.record.progress
    if fenced:
        return "fenced", (f"{fenced['count']} report(s) of ranks of an older generation or "
                          "incarnation were refused; stop those ranks")
    if now is not None and not now.values and now.waits_for_epoch is not None:
        return "waiting", (f"waiting for the validation decision of epoch "
                           f"{now.waits_for_epoch}")
    ranks = len(progress)
    if progress and min(progress.values()) >= view.max_iters and (
            not view.record.world_size or ranks >= view.record.world_size):
        return "finished", f"every rank reached iteration {view.max_iters}"
    if any(it > 0 for it in progress.values()):
        return "running", ""
    return "new", "no rank has reported progress yet"


def summary(view: JobView, now: Plan | None, fenced: dict[str, Any] | None) -> dict[str, Any]:
    """One row of the jobs page."""
    record, spec = view.record, view.spec
    its = list(record.progress.values())
    state, detail = state_of(view, now, fenced)
    current: dict[str, Any] = {"iteration": frontier(view), "values": [],
                               "waits_for_epoch": None}
    if now is not None:
        current["values"] = [finite({p: g.get(p) for p in now.params})
                             for g in (now.values[0] if now.values else [])]
        current["waits_for_epoch"] = now.waits_for_epoch
    return {
        "job_id": record.job_id,
        "state": state,
        "state_detail": detail,
        "generation": record.generation,
        "incarnation": record.incarnation,
        "run_id": record.run_id,
        "world_size": record.world_size,
        "ranks": [{"rank": r, "iteration": it} for r, it in sorted(record.progress.items())],
        "progress": {"min": min(its, default=0), "max": max(its, default=0),
                     "spread": (max(its) - min(its)) if its else 0, "reported": len(its)},
        "max_iters": view.max_iters,
        "epoch_length": spec.epoch_length,
        "max_epochs": spec.max_epochs,
        "issued_until": record.issued_until,
        "params": list(view.params),
        "num_groups": spec.num_groups,
        "current": current,
        "num_changes": record.num_changes,
        "last_change": last_change(view),
        "created_at": record.created_at,
        "fenced": fenced,
    }


def detail(view: JobView, now: Plan | None, fenced: dict[str, Any] | None) -> dict[str, Any]:
    """The job page's header: the summary, the spec and the changes in force."""
    data = summary(view, now, fenced)
    data["spec"] = finite(view.spec.to_dict())
    data["changes"] = finite(list(view.record.changes or []))
    return data


def audit_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An audit entry as stored (when, who, what, where, before -> after, why)."""
    return finite({
        "time": float(entry.get("time") or 0.0),
        "principal": str(entry.get("principal") or ""),
        "action": str(entry.get("action") or ""),
        "iteration": int(entry.get("iteration") or 0),
        "generation": int(entry.get("generation") or 0),
        "details": entry.get("details"),
        "reason": str(entry.get("reason") or ""),
        "before": list(entry.get("before") or []),
        "after": list(entry.get("after") or []),
    })
