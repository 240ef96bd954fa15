"""``reschedule`` and its convenience forms: each one ``Client`` change method.

The command line is parsed into the same frozen ``Change`` the Python API builds
(``paramsched.client.admin``); what is printed is the ``ChangeResult``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from paramsched.client import ChangeResult, Values
from paramsched.client.admin import (
    MAX_PREVIEW_ITERATIONS,
    Change,
    decay_change,
    extend_change,
    hold_change,
    reschedule_change,
    rewarm_change,
    scale_change,
    set_change,
)

from .common import fmt, table
from .configs import configs_from_args
from .connect import client_from_args
from .curves import ProgressBar, plot_stride
from .jobs import indent
from .plots import Layer, draw, figure_class


def _common(a: argparse.Namespace) -> dict[str, Any]:
    return {"groups": a.groups, "from_iteration": a.from_iteration, "reason": a.reason,
            "force": a.force, "dry_run": a.dry_run}


CHANGES: dict[str, Callable[[argparse.Namespace], Change]] = {
    "reschedule": lambda a: reschedule_change(
        a.job, configs_from_args(a), mode=a.mode, params=a.params, start_values=a.start,
        max_iters=a.max_iters, **_common(a)),
    "set": lambda a: set_change(a.job, a.param, a.value, **_common(a)),
    "scale": lambda a: scale_change(a.job, a.param, a.factor, **_common(a)),
    "hold": lambda a: hold_change(a.job, a.param, **_common(a)),
    "decay": lambda a: decay_change(a.job, a.param, to=a.to, over=a.over, shape=a.shape,
                                    **_common(a)),
    "rewarm": lambda a: rewarm_change(a.job, a.param, from_factor=a.from_factor, over=a.over,
                                      **_common(a)),
    "extend": lambda a: extend_change(a.job, max_iters=a.max_iters, **_common(a)),
}


def build_change(args: argparse.Namespace) -> Change:
    """The change a command line stands for."""
    return CHANGES[args.command](args)


def build_request(args: argparse.Namespace) -> Any:
    """The ``RescheduleJob`` request a change command sends (preview size aside)."""
    return build_change(args).to_request()


def cmd_change(args: argparse.Namespace) -> int:
    change = build_change(args)
    with client_from_args(args) as client:
        current: Values | None = None
        preview = None
        if args.plot:
            figure_class()  # fail before changing anything if matplotlib is missing
            job = client.get_job(change.job_id)
            end = max(job.max_iters, change.max_iters or 0) + 1
            start = change.from_iteration if change.from_iteration is not None else 0
            preview = max(1, min(MAX_PREVIEW_ITERATIONS, end - start))
            # A figure draws about PLOT_POINTS points: the server computes every
            # stride-th iteration only, as for `paramsched plot --job`.
            stride = plot_stride(end)
            bar = ProgressBar(-(-(job.max_iters + 1) // stride), "fetching")
            current = client.values(change.job_id, 0, job.max_iters + 1, stride=stride,
                                    progress=bar.update)
            bar.close()
        result = client.change(change, preview_iterations=preview)
        after = result.after
        end = result.job.max_iters + 1
        if current is not None:
            after = _on_grid(after, current.stride)
            if result.applied and after.stop < end and after.waits_for_epoch is None:
                after = after.joined(client.values(change.job_id, after.stop, end,
                                                   stride=current.stride))
    print(change_summary(result))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if current is not None:
        _plot_change(args.plot, result, current, after, log_y=args.log_y)
    return 0


def _on_grid(after: Values, stride: int) -> Values:
    """The change's preview (every iteration from s) kept every ``stride``-th one, so
    the rest of the job, read with that stride, continues it."""
    if stride == 1:
        return after
    return Values(after.start, after.params, after.num_groups, after.rows[::stride],
                  after.waits_for_epoch, after.generation, after.max_iters, stride)


def _joined(current: Values, after: Values) -> Values:
    """``after`` led by the last unchanged iteration, so the line shows the step at s."""
    lead_at = after.start - after.stride  # s - 1 unstrided; strided, when on the grid
    if lead_at < 0 or not current.covers(lead_at) or not after.rows or any(
            p not in current.params for p in after.params):
        return after
    lead = tuple({p: v[p] for p in after.params} for v in current.at(lead_at))
    return Values(lead_at, after.params, after.num_groups, (lead, *after.rows),
                  after.waits_for_epoch, stride=after.stride)


def _plot_change(out: str, result: ChangeResult, current: Values, after: Values, *,
                 log_y: bool) -> None:
    """Before (dotted) vs after (solid) from from_iteration on, the unchanged past before."""
    s = result.from_iteration
    if not result.applied and after.stop < result.job.max_iters + 1 and after.rows:
        print(f"note: a dry run previews at most {MAX_PREVIEW_ITERATIONS} iterations; the "
              f"'after' curve stops at iteration {after.iterations[-1]}", file=sys.stderr)
    # With a stride, the past and "before" lines overlap by one point, so they meet.
    step = current.stride
    layers = [Layer(current, None, "-", 1.0, stop=s if step == 1 else s + step),
              Layer(current, "before", ":", 0.7, start=max(0, s - step)),
              Layer(_joined(current, after), "after", "-", 1.0)]
    dry = " (dry run)" if not result.applied else ""
    draw(out, layers, title=f"{result.job_id}: {result.action} from iteration {s}{dry}",
         epoch_length=result.job.epoch_length, marks=[(s, "from")], log_y=log_y)
    print(f"wrote {out}")


def change_summary(result: ChangeResult) -> str:
    """What happened (or would), and per group the values before -> after at the
    change's first iteration and, when it shapes more, at its last one."""
    s, until = result.from_iteration, result.until
    state = "applied" if result.applied else "dry run (nothing changed)"
    lines = [f"{result.action} on job {result.job_id!r} from iteration {s}: {state}"]
    if result.applied:
        lines[0] += f"; generation {result.job.generation}, change #{result.job.num_changes}"
    if result.action == "extend" or result.job.max_iters != result.before.max_iters:
        lines.append(f"training length: {result.job.max_iters} iterations")
    old, new = result.values_at(s)
    old_end, new_end = result.values_at(until) if until > s else ((), ())
    show_end = bool(old_end or new_end)
    for g in range(max(len(old), len(new))):
        lines.append(f"group {g}:")
        b, a = (old[g] if g < len(old) else {}), (new[g] if g < len(new) else {})
        be = old_end[g] if g < len(old_end) else {}
        ae = new_end[g] if g < len(new_end) else {}
        headers = ["param", "before", "", "after", ""]
        if show_end:
            headers += [f"at {until}: before", "", "after", ""]
        rows = []
        for p in dict.fromkeys([*b, *a, *be, *ae]):
            row = [p, _cell(b, p), "->", _cell(a, p), "" if b.get(p) == a.get(p) else "*"]
            if show_end:
                row += [_cell(be, p), "->", _cell(ae, p), "" if be.get(p) == ae.get(p) else "*"]
            rows.append(row)
        lines.append(indent(table(headers, rows)))
    return "\n".join(lines)


def _cell(values: dict[str, float], param: str) -> str:
    return fmt(values[param]) if param in values else "-"
