"""``reschedule`` and its convenience forms: requests, dry runs, before/after plots."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from paramsched.api.v1 import scheduler_pb2 as pb

from .common import MAX_PREVIEW_ITERATIONS, MODES, fmt, table
from .configs import configs_from_args
from .curves import Curves, ProgressBar, decode_plan, fetch_values
from .jobs import indent
from .plots import Layer, draw, figure_class
from .session import Session, connect


# -- requests for changes ------------------------------------------------------------
def _change_request(args: argparse.Namespace, mode: str, *,
                    configs: Sequence[Mapping[str, Any]] = (), params: Sequence[str] = (),
                    start_values: Mapping[str, float] | None = None,
                    max_iters: int | None = None) -> pb.RescheduleJobRequest:
    request = pb.RescheduleJobRequest(
        job_id=args.job, mode=MODES[mode], param_scheduler_json=json.dumps(list(configs)),
        params=list(params), groups=args.groups or [], start_values=dict(start_values or {}),
        dry_run=args.dry_run, force=args.force, action=args.command, reason=args.reason)
    if args.from_iteration is not None:
        request.from_iteration = args.from_iteration
    if max_iters is not None:
        request.max_iters = max_iters
    return request


def _decay_config(args: argparse.Namespace) -> dict[str, Any]:
    """One config reaching ``--to`` at from + N and holding it (end = N + 1)."""
    if args.shape == "cosine":
        return {"type": "CosineAnnealingParamScheduler", "param_name": args.param,
                "T_max": args.over, "eta_min": args.to, "by_epoch": False, "end": args.over + 1}
    return {"type": "PolyParamScheduler", "param_name": args.param, "eta_min": args.to,
            "power": 1.0, "by_epoch": False, "end": args.over + 1}


def _rewarm_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"type": "LinearParamScheduler", "param_name": args.param,
            "start_factor": args.from_factor, "end_factor": 1.0, "by_epoch": False,
            "end": args.over + 1}


REQUESTS: dict[str, Callable[[argparse.Namespace], pb.RescheduleJobRequest]] = {
    "reschedule": lambda a: _change_request(
        a, a.mode, configs=configs_from_args(a), params=a.params or (),
        start_values=a.start, max_iters=a.max_iters),
    "set": lambda a: _change_request(a, "replace", params=[a.param],
                                     start_values={a.param: a.value}),
    "scale": lambda a: _change_request(a, "multiply", params=[a.param],
                                       start_values={a.param: a.factor}),
    "hold": lambda a: _change_request(a, "replace", params=[a.param]),
    "decay": lambda a: _change_request(a, "replace", params=[a.param],
                                       configs=[_decay_config(a)]),
    "rewarm": lambda a: _change_request(a, "multiply", params=[a.param],
                                        configs=[_rewarm_config(a)]),
    "extend": lambda a: _change_request(a, "stretch", max_iters=a.max_iters),
}


def build_request(args: argparse.Namespace) -> pb.RescheduleJobRequest:
    """The RescheduleJob request a change command stands for."""
    return REQUESTS[args.command](args)
# -- changes -------------------------------------------------------------------------
def cmd_change(args: argparse.Namespace) -> int:
    request = build_request(args)
    with connect(args) as session:
        current = None
        if args.plot:
            figure_class()  # fail before changing anything if matplotlib is missing
            current = _current_schedule(session, request)
        reply: pb.RescheduleJobResponse = session.call("RescheduleJob", request)
        after = decode_plan(reply.after)
        end = reply.job.max_iters + 1
        if args.plot and reply.applied and after.stop < end and after.waits_for_epoch is None:
            after.extend(fetch_values(session, reply.job, after.stop, end))
    print(_change_summary(request, reply))
    if current is not None:
        _plot_change(args.plot, request, reply, current, after)
    return 0


def _current_schedule(session: Session, request: pb.RescheduleJobRequest) -> Curves:
    """The job's whole schedule before the change; sets the request's preview length to
    cover the rest of training (old or new length), within the server's limit."""
    job: pb.Job = session.call("GetJob", pb.GetJobRequest(job_id=request.job_id)).job
    end = max(job.max_iters, request.max_iters if request.HasField("max_iters") else 0) + 1
    start = request.from_iteration if request.HasField("from_iteration") else 0
    request.preview_iterations = max(1, min(MAX_PREVIEW_ITERATIONS, end - start))
    return fetch_values(session, job, 0, job.max_iters + 1,
                        ProgressBar(job.max_iters + 1, "fetching"))


def _joined(current: Curves, after: Curves) -> Curves:
    """``after`` led by the last unchanged iteration, so the line shows the step at s."""
    s = after.start
    if s == 0 or not current.start <= s - 1 < current.stop or not after.rows or any(
            p not in current.params for p in after.params):
        return after
    lead = [{p: v[p] for p in after.params} for v in current.rows[s - 1 - current.start]]
    return Curves(s - 1, after.params, after.num_groups, [lead, *after.rows],
                  after.waits_for_epoch)


def _plot_change(out: str, request: pb.RescheduleJobRequest, reply: pb.RescheduleJobResponse,
                 current: Curves, after: Curves) -> None:
    """Before (dotted) vs after (solid) from from_iteration on, the unchanged past before."""
    s = reply.from_iteration
    if not reply.applied and after.stop < reply.job.max_iters + 1 and after.rows:
        print(f"note: a dry run previews at most {MAX_PREVIEW_ITERATIONS} iterations; the "
              f"'after' curve stops at iteration {after.stop - 1}", file=sys.stderr)
    layers = [Layer(current, None, "-", 1.0, stop=s),
              Layer(current, "before", ":", 0.7, start=max(0, s - 1)),
              Layer(_joined(current, after), "after", "-", 1.0)]
    dry = " (dry run)" if not reply.applied else ""
    draw(out, layers, title=f"{request.job_id}: {request.action} from iteration {s}{dry}",
         epoch_length=reply.job.epoch_length if reply.job.HasField("epoch_length") else None,
         marks=[(s, "from")])
    print(f"wrote {out}")


def _change_summary(request: pb.RescheduleJobRequest, reply: pb.RescheduleJobResponse) -> str:
    """What happened (or would), and the values at from_iteration per group."""
    state = ("applied" if reply.applied else "dry run (nothing changed)")
    lines = [f"{request.action} on job {request.job_id!r} from iteration "
             f"{reply.from_iteration}: {state}"]
    if reply.applied:
        lines[0] += f"; generation {reply.job.generation}, change #{reply.job.num_changes}"
    if request.HasField("max_iters"):
        lines.append(f"training length: {request.max_iters} iterations")
    before, after = decode_plan(reply.before), decode_plan(reply.after)
    old = before.rows[0] if before.rows else [dict(v.values) for v in reply.entry.before]
    new = after.rows[0] if after.rows else [dict(v.values) for v in reply.entry.after]
    for g in range(max(len(old), len(new))):
        lines.append(f"group {g}:")
        b, a = (old[g] if g < len(old) else {}), (new[g] if g < len(new) else {})
        rows = [[p, fmt(b[p]) if p in b else "-", "->", fmt(a[p]) if p in a else "-",
                 "" if b.get(p) == a.get(p) else "*"]
                for p in dict.fromkeys([*b, *a])]
        lines.append(indent(table(["param", "before", "", "after", ""], rows)))
    return "\n".join(lines)
