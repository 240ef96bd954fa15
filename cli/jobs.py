"""``jobs list/show/history/delete``: each a call of the client's admin API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from paramsched.client import AuditEntry

from .common import fmt, job_length, plural, table, values_table, when
from .connect import client_from_args


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        jobs = client.list_jobs(args.prefix)
    if not jobs:
        print("no jobs" + (f" with prefix {args.prefix!r}" if args.prefix else ""))
        return 0
    rows = [[job.job_id, str(job.generation), f"{job.furthest_iteration}/{job.max_iters}",
             str(job.issued_until), f"{len(job.progress)}/{job.world_size or '?'}",
             str(job.num_changes), ",".join(job.params), when(job.created_at)] for job in jobs]
    print(table(["JOB", "GEN", "ITERATION", "PLANNED", "RANKS", "CHANGES", "PARAMS",
                 "CREATED"], rows))
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        job = client.get_job(args.job)
        at = min(job.furthest_iteration, job.max_iters)
        now = client.values(args.job, at, at + 1)
    groups = plural(job.num_groups, "param group")
    state = (f"finished at iteration {job.max_iters}" if job.furthest_iteration >= job.max_iters
             else f"running (furthest iteration {job.furthest_iteration} of {job.max_iters})")
    fields = [
        ("job", job.job_id),
        ("created", when(job.created_at)),
        ("state", state),
        ("generation", str(job.generation)),
        ("length", job_length(job)),
        ("params", f"{', '.join(job.params)} ({groups}"
                   + (", momentum via betas[0])" if job.momentum_via_betas else ")")),
        ("plan horizon", f"{job.issued_until} (values below it were handed out)"),
        ("changes", f"{job.num_changes} in this generation"),
        ("world size", str(job.world_size or "unknown")),
    ]
    if job.bounds or job.max_jump_factor is not None:
        limits = [f"{p} in [{'-inf' if lo is None else fmt(lo)}, "
                  f"{'inf' if hi is None else fmt(hi)}]" for p, (lo, hi) in job.bounds.items()]
        if job.max_jump_factor is not None:
            limits.append(f"max jump x{job.max_jump_factor:g}")
        fields.append(("guardrails", "; ".join(limits)))
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


def _details(details: Any) -> str:
    """The change as sent, without empty fields (defaults), the iteration and the
    values in force there ("resolved"), which the other lines already show."""
    if isinstance(details, dict):
        details = {k: v for k, v in details.items()
                   if k not in ("from_iteration", "resolved") and v not in (None, [], {}, "")}
        configs = details.get("param_scheduler")
        if isinstance(configs, list):  # the type first: it says the most when shortened
            details["param_scheduler"] = [
                {"type": c["type"], **c} if isinstance(c, dict) and "type" in c else c
                for c in configs]
    if isinstance(details, str):
        return details
    return json.dumps(details, separators=(", ", ": ")) if details else ""


def entry_lines(entry: AuditEntry, width: int = 160) -> list[str]:
    """One audit entry: a headline, the values at its iteration per group (before ->
    after, as recorded), what was sent (shortened) and the reason."""
    lines = [f"{when(entry.time)}  {entry.action}  by {entry.principal}  at iteration "
             f"{entry.iteration}  (generation {entry.generation})"]
    for g, (before, after) in enumerate(zip(entry.before, entry.after, strict=False)):
        names = list(dict.fromkeys([*before, *after]))
        pairs = [f"{p} {fmt(before[p]) if p in before else '-'} -> "
                 f"{fmt(after[p]) if p in after else '-'}" for p in names]
        if pairs:
            lines.append(f"    group {g}: " + ", ".join(pairs))
    details = _details(entry.details)
    if details:
        lines.append("    details: " + (details if len(details) <= width
                                         else details[:width - 3] + "..."))
    if entry.reason:
        lines.append(f"    reason: {entry.reason}")
    return lines


def cmd_jobs_history(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        entries = client.history(args.job)
    if not entries:
        print(f"no history for job {args.job!r}")
    for entry in entries:
        print("\n".join(entry_lines(entry)))
    return 0


def cmd_jobs_delete(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        deleted = client.delete_job(args.job)
    if not deleted:
        print(f"error: NOT_FOUND: no job {args.job!r}", file=sys.stderr)
        return 1
    print(f"deleted job {args.job!r}")
    return 0
