"""Run every benchmark and write one markdown report (``benchmarks/results/REPORT.md``).

    .venv/bin/python benchmarks/run_all.py            # the full run (~10 minutes)
    .venv/bin/python benchmarks/run_all.py --quick    # a smoke run (~2 minutes)
    make bench ARGS="--quick --out /tmp/REPORT.md"

Each benchmark runs in its own process, one after the other (they would compete for
the CPUs otherwise), and writes its markdown table; every table carries ratios against
a baseline measured in the same run next to the absolute numbers. A benchmark that
fails or runs past its time limit writes its error into its section, and the others
still run. Sections:

1. Random access: the values at iteration t, cold and warm, vs replaying from 0
   (``bench_random_access.py``).
2. Cold refills: a server that never saw a job (restart, replica, ``LoadState`` into
   an empty store, cache eviction) vs a warm one, at t = 10^3..10^7 and over 10..10,000
   jobs (``bench_cold_refill.py``).
3. Isolation: one job's report latency while far-ahead reports, huge previews and wide
   attaches hit the same server (``bench_isolation.py``).
4. Report RPC: throughput and p50/p99 vs a bare grpc.aio echo server, embedded and
   Redis stores (``bench_report_rpc.py``).
5. Training-loop overhead: an attached optimizer vs MMEngine's and torch's local
   schedulers (``bench_client_overhead.py``, when present).
6. Scale: 1-256 simulated ranks over 1-16 jobs on two servers + Redis
   (``bench_scale.py``).
7. Memory: server RSS and Redis memory per 1,000 jobs (``bench_memory.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "REPORT.md"


@dataclass
class Section:
    title: str
    script: str
    args: list[str]
    quick_args: list[str]
    timeout: float  # seconds, full run
    note: str = ""
    writes_markdown: bool = True  # takes --out FILE.md; otherwise its stdout is shown

    @property
    def path(self) -> Path:
        return HERE / self.script


def client_overhead_section() -> Section:
    """The training-loop overhead benchmark, with the flags its ``--help`` documents."""
    section = Section(
        "Training-loop overhead (attached optimizer vs local schedulers)",
        "bench_client_overhead.py", [], [], 900,
        note="Per-iteration overhead over a bare `optimizer.step()` loop; the figure to "
             "watch is paramsched / MMEngine (target <= 1.0).")
    if not section.path.exists():
        return section
    try:
        usage = subprocess.run([sys.executable, str(section.path), "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        usage = ""
    section.writes_markdown = "--out" in usage
    if "--iters" in usage:
        section.quick_args += ["--iters", "5000"]
    if "--rounds" in usage:
        section.quick_args += ["--rounds", "3"]
    return section


def sections() -> list[Section]:
    return [
        Section("Random access into a schedule", "bench_random_access.py",
                ["--max-exp", "7"], ["--max-exp", "5"], 900,
                note="Time to get the values at iteration t. Ratio: warm query / replay from "
                     "iteration 0 (what the server would pay without keyframes)."),
        Section("Cold refills: restarts, replicas, LoadState, many jobs", "bench_cold_refill.py",
                ["--max-exp", "7"], ["--max-exp", "4", "--jobs", "10,100,300"], 1200,
                note="Goal: cold <= 2x warm at every t; round robin over N jobs <= 2x the "
                     "10-job figure; LoadState at 10^7 costs what it costs at 10^3."),
        Section("Isolation: a job's reports while hostile requests arrive",
                "bench_isolation.py", ["--seconds", "5"], ["--seconds", "2"], 300,
                note="Goal: the victim's report p50 under attack <= 2x alone."),
        Section("Report RPC vs a bare grpc.aio echo server", "bench_report_rpc.py",
                ["--seconds", "5"], ["--seconds", "1"], 600,
                note="Target: paramsched throughput >= 0.6 of the echo server's."),
        client_overhead_section(),
        Section("Scale: simulated ranks x jobs on two servers + Redis", "bench_scale.py",
                ["--seconds", "5"], ["--seconds", "1", "--grid", "1x1,16x4,256x16"], 900,
                note="The full grid: 1, 16, 64, 256 ranks over 1, 4, 16 jobs (a cell needs "
                     "at least one rank per job, so 1 rank runs 1 job)."),
        Section("Memory per 1,000 jobs", "bench_memory.py",
                ["--jobs", "1000,5000"],
                ["--jobs", "200", "--long-jobs", "3", "--long-iters", "2048"], 1200),
    ]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _command_output(command: list[str]) -> str:
    try:
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or out.stderr.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine() -> list[str]:
    commit = _command_output(["git", "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    if commit != "unknown" and dirty and dirty != "unknown":
        commit += " (with uncommitted changes)"
    return [
        f"- CPUs: {os.cpu_count()} (`nproc`: {_command_output(['nproc'])}), "
        f"model: {_cpu_model()}; memory: {_mem_total()}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()} ({sys.executable}); torch "
        f"{_version('torch')}; grpcio {_version('grpcio')}; protobuf {_version('protobuf')}; "
        f"redis-py {_version('redis')}",
        f"- {_command_output(['redis-server', '--version'])}",
        f"- paramsched commit {commit}",
    ]


def _python() -> str:
    """The interpreter as the user typed it: relative to the repository when inside it."""
    exe = Path(sys.executable)
    return str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)


def run_section(section: Section, quick: bool, tmp: Path) -> tuple[list[str], str, float]:
    """The section's markdown lines, its status, and its wall time."""
    lines = [f"## {section.title}", ""]
    if not section.path.exists():
        lines.append(f"Not run: `benchmarks/{section.script}` does not exist in this checkout "
                     "(the hook runs it once it is there).")
        return lines, "missing", 0.0
    out = tmp / (section.path.stem + ".md")
    args = section.quick_args if quick else section.args
    command = [sys.executable, str(section.path), *args]
    if section.writes_markdown:
        command += ["--out", str(out)]
    shown = shlex.join([_python() if c == sys.executable else c for c in command])
    shown = shown.replace(str(ROOT) + "/", "").replace(str(tmp), "$TMP")
    if section.note:
        lines += [section.note, ""]
    lines += [f"Command: `{shown}`", ""]
    timeout = section.timeout / (3 if quick else 1)
    begin = time.perf_counter()
    print(f"== {section.title}: {shown}", flush=True)
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        elapsed = time.perf_counter() - begin
        tail = _tail(exc.stderr) or _tail(exc.stdout)
        lines += [f"**FAILED**: still running after {timeout:.0f} s, stopped.", "",
                  "```text", tail, "```"]
        return lines, "timed out", elapsed
    except OSError as exc:
        return [*lines, f"**FAILED** to start: {exc}"], "failed", time.perf_counter() - begin
    elapsed = time.perf_counter() - begin
    if result.returncode != 0:
        lines += [f"**FAILED** with exit code {result.returncode}:", "", "```text",
                  _tail(result.stderr) or _tail(result.stdout), "```"]
        return lines, f"failed (exit {result.returncode})", elapsed
    if section.writes_markdown and out.exists():
        lines.append(out.read_text().rstrip())
    else:
        lines += ["```text", result.stdout.rstrip(), "```"]
    lines += ["", f"_Ran in {elapsed:.0f} s._"]
    return lines, "ok", elapsed


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.rstrip().splitlines()[-lines:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short durations and small sizes: a smoke run, not figures")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"the markdown report (default {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--only", default="",
                        help="comma-separated script names to run (default: all), "
                             "e.g. bench_scale,bench_memory")
    args = parser.parse_args()
    started = dt.datetime.now(dt.UTC)
    load_before = load_average()
    chosen = [s for s in sections()
              if not args.only or s.path.stem in args.only.split(",")]
    body: list[str] = []
    summary = ["| benchmark | status | wall time |", "|---|---|---:|"]
    with tempfile.TemporaryDirectory(prefix="paramsched-bench-") as tmp:
        for section in chosen:
            lines, status, elapsed = run_section(section, args.quick, Path(tmp))
            body += [*lines, ""]
            summary.append(f"| {section.title} | {status} | {elapsed:.0f} s |")
            print(f"   {status} in {elapsed:.0f} s", flush=True)
    header = [
        "# paramsched benchmark report" + (" (QUICK smoke run: not for figures)"
                                           if args.quick else ""),
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC",
        f"- Command: `{shlex.join([_python(), *sys.argv])}` (from the repository root; "
        "`make bench` runs it)",
        *machine(),
        f"- Load average (1 / 5 / 15 min) at the start: {load_before}; at the end: "
        f"{load_average()}",
        "",
        "Every figure is measured on this machine, in this run, next to its baseline "
        "(also measured in this run); the client, the servers and Redis share the CPUs "
        "above, and other processes running at the same time skew the absolute figures "
        "(the same-run ratios less so).",
        "",
    ]
    report = "\n".join([*header, *summary, "", *body]).rstrip() + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
