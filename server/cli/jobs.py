"""``jobs list/show/history/delete``."""

from __future__ import annotations

import argparse
import json
import sys

from paramsched.api.v1 import scheduler_pb2 as pb

from .common import fmt, furthest, job_length, table, values_table, when
from .curves import decode_plan
from .session import connect


# -- jobs ----------------------------------------------------------------------------
def cmd_jobs_list(args: argparse.Namespace) -> int:
    rows = []
    with connect(args) as session:
        token = ""
        while True:
            reply = session.call("ListJobs", pb.ListJobsRequest(prefix=args.prefix,
                                                                page_token=token))
            for job in reply.jobs:
                rows.append([job.job_id, str(job.generation),
                             f"{furthest(job)}/{job.max_iters}", str(job.issued_until),
                             f"{len(job.progress)}/{job.world_size or '?'}",
                             str(job.num_changes), ",".join(job.params), when(job.created_at)])
            token = reply.next_page_token
            if not token:
                break
    if not rows:
        print("no jobs" + (f" with prefix {args.prefix!r}" if args.prefix else ""))
        return 0
    print(table(["JOB", "GEN", "ITERATION", "PLANNED", "RANKS", "CHANGES", "PARAMS",
                  "CREATED"], rows))
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with connect(args) as session:
        job: pb.Job = session.call("GetJob", pb.GetJobRequest(job_id=args.job)).job
        at = min(furthest(job), job.max_iters)
        now = decode_plan(session.call("GetValues", pb.GetValuesRequest(
            job_id=args.job, start_iteration=at, stop_iteration=at + 1)).plan)
    fields = [
        ("job", job.job_id),
        ("created", when(job.created_at)),
        ("generation", str(job.generation)),
        ("length", job_length(job)),
        ("params", f"{', '.join(job.params)} ({job.num_groups} param groups"
                   + (", momentum via betas[0])" if job.momentum_via_betas else ")")),
        ("plan horizon", f"{job.issued_until} (values below it were handed out)"),
        ("changes", f"{job.num_changes} in this generation"),
        ("world size", str(job.world_size or "unknown")),
    ]
    print("\n".join(f"{name + ':':<14}{value}" for name, value in fields))
    print("progress:")
    for p in job.progress:
        print(f"  rank {p.rank}: iteration {p.iteration}")
    if not job.progress:
        print("  (no rank has reported yet)")
    if now.rows:
        print(f"current values (iteration {at}):")
        print(indent(values_table(now.rows[0], now.params)))
    else:
        print(f"current values (iteration {at}): waiting for the validation decision of "
              f"epoch {now.waits_for_epoch}")
    return 0


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _details(details_json: str) -> str:
    """The change as sent, without empty fields (defaults), the iteration and the
    values in force there ("resolved"), which the other lines already show."""
    try:
        details = json.loads(details_json) if details_json else None
    except ValueError:
        return details_json
    if isinstance(details, dict):
        details = {k: v for k, v in details.items()
                   if k not in ("from_iteration", "resolved") and v not in (None, [], {}, "")}
        configs = details.get("param_scheduler")
        if isinstance(configs, list):  # the type first: it says the most when shortened
            details["param_scheduler"] = [
                {"type": c["type"], **c} if isinstance(c, dict) and "type" in c else c
                for c in configs]
    return json.dumps(details, separators=(", ", ": ")) if details else ""


def _entry_lines(entry: pb.AuditEntry, width: int = 160) -> list[str]:
    """One audit entry: a headline, the values at its iteration per group (before ->
    after, as recorded), what was sent (shortened) and the reason."""
    lines = [f"{when(entry.time)}  {entry.action}  by {entry.principal}  at iteration "
             f"{entry.iteration}  (generation {entry.generation})"]
    for g, (before, after) in enumerate(zip(entry.before, entry.after, strict=False)):
        names = list(dict.fromkeys([*before.values, *after.values]))
        pairs = [f"{p} {fmt(before.values[p]) if p in before.values else '-'} -> "
                 f"{fmt(after.values[p]) if p in after.values else '-'}" for p in names]
        if pairs:
            lines.append(f"    group {g}: " + ", ".join(pairs))
    details = _details(entry.details_json)
    if details:
        lines.append("    details: " + (details if len(details) <= width
                                         else details[:width - 3] + "..."))
    if entry.reason:
        lines.append(f"    reason: {entry.reason}")
    return lines


def cmd_jobs_history(args: argparse.Namespace) -> int:
    with connect(args) as session:
        entries = session.call("GetJobHistory",
                               pb.GetJobHistoryRequest(job_id=args.job)).entries
    if not entries:
        print(f"no history for job {args.job!r}")
    for entry in entries:
        print("\n".join(_entry_lines(entry)))
    return 0


def cmd_jobs_delete(args: argparse.Namespace) -> int:
    with connect(args) as session:
        deleted = session.call("DeleteJob", pb.DeleteJobRequest(job_id=args.job)).deleted
    if not deleted:
        print(f"error: NOT_FOUND: no job {args.job!r}", file=sys.stderr)
        return 1
    print(f"deleted job {args.job!r}")
    return 0
