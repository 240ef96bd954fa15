"""Training ranks as real processes, for the fault-injection tests.

This module is both the rank program (``python tests/fault_harness.py --rank 0 ...``:
imports only torch and the paramsched client, so a rank starts fast) and the
orchestration helpers the tests use to start, watch and kill ranks.

A rank trains a tiny model (``nn.Linear(8, 1)``, two param groups: weight and bias)
for ``MAX_ITERS`` iterations, attached to one paramsched job, sleeping a little per
step so faults land mid-run. Before every ``optimizer.step()`` it appends what its
optimizer holds (lr, momentum, weight_decay per group) to its record file (JSON lines,
flushed at once: the orchestrator reads them live to time its faults). After every
epoch it calls ``handle.end_epoch(METRICS[epoch])``: every rank sends the same metrics.
Every client error it sees (exceptions, warnings, paramsched log records at WARNING
and above) goes to the record file too.

With ``--ddp`` the ranks form a torch.distributed gloo group and the model is wrapped
in ``DistributedDataParallel``. Without it the ranks are independent processes doing
the same steps (needed where a rank is dropped and a new process takes its place: a
gloo group cannot take a new member, and its survivors fail on the dead peer).

Re-joining (``--resume-file``): a rank whose job was resumed from a checkpoint by
another process (``StaleGenerationError``, as the client's message instructs: "stop
this rank, restart it and call handle.load_state_dict(checkpoint)") detaches,
attaches again and loads the checkpoint named in the resume file, rolling its model,
optimizer and iteration back to it. ``--standby GO_FILE`` starts a replacement rank
that imports and builds everything, waits for GO_FILE, then joins the job the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- the job

EPOCH_LENGTH = 8
MAX_EPOCHS = 10
MAX_ITERS = EPOCH_LENGTH * MAX_EPOCHS
NAMES = ("lr", "momentum", "weight_decay")
#: iteration-based warm-up, epoch-based momentum and weight decay, ReduceOnPlateau on lr.
SCHEDULE: list[dict[str, Any]] = [
    {"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "begin": 0, "end": 12},
    {"type": "CosineAnnealingMomentum", "eta_min": 0.5, "T_max": MAX_EPOCHS},
    {"type": "MultiStepParamScheduler", "param_name": "weight_decay", "milestones": [3, 6],
     "gamma": 0.1},
    {"type": "ReduceOnPlateauLR", "monitor": "loss", "patience": 0, "factor": 0.5},
]
#: SGD's initial values per param group (weight, bias).
GROUPS: list[dict[str, float]] = [
    {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.0},
]
#: the validation loss every rank reports after each epoch: the plateau reduces lr
#: after epochs 2, 4, 5, 7 and 9 (patience 0).
LOSSES = [1.0, 0.9, 0.95, 0.8, 0.85, 0.86, 0.7, 0.75, 0.6, 0.65]
METRICS: dict[int, dict[str, float]] = {e: {"loss": v} for e, v in enumerate(LOSSES)}

Row = tuple[tuple[float, ...], ...]  # per param group: (lr, momentum, weight_decay)


# --------------------------------------------------------------------------- the rank


class Recorder:
    """Appends JSON lines to the rank's record file, flushed at once."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = path.open("a", buffering=1)

    def write(self, kind: str, **data: Any) -> None:
        record = {"kind": kind, "pid": os.getpid(), "time": time.time(), **data}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def values(self, t: int, optimizer: Any, generation: int) -> None:
        row = [[float(g[n]) for n in NAMES] for g in optimizer.param_groups]
        self.write("values", t=t, gen=generation, values=row)

    def error(self, exc: BaseException | str, where: str) -> None:
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "log"
        self.write("error", type=kind, message=str(exc), where=where)


class _RecordHandler(logging.Handler):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__(logging.WARNING)
        self._recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        self._recorder.error(record.getMessage(), f"log:{record.name}")


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.01)


def _save_atomically(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rank_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--ddp", help="gloo init_method (tcp://host:port)")
    parser.add_argument("--step-sleep", type=float, default=0.05)
    parser.add_argument("--checkpoint-dir", type=Path, help="write a checkpoint every epoch")
    parser.add_argument("--resume-file", type=Path, help="JSON naming the checkpoint to rejoin")
    parser.add_argument("--standby", type=Path, help="wait for this file, then rejoin")
    args = parser.parse_args(argv)
    recorder = Recorder(args.record)
    recorder.write("started")
    logging.getLogger("paramsched").addHandler(_RecordHandler(recorder))

    def showwarning(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
        recorder.error(f"{category.__name__}: {message}", "warning")

    warnings.showwarning = showwarning
    try:
        _train(args, recorder)
    except BaseException as exc:
        recorder.error(exc, "fatal")
        recorder.write("traceback", text=traceback.format_exc())
        return 1
    recorder.write("done")
    return 0


def _train(args: argparse.Namespace, recorder: Recorder) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    from paramsched import Client
    from paramsched.client import ScheduleHandle, StaleGenerationError

    rank, world = args.rank, args.world_size
    if not args.ddp:  # the rank processes of one harness launch are one run
        os.environ.setdefault("PARAMSCHED_RUN_ID", f"faults-{args.job}")
    recorder.write("imported")
    if args.ddp:
        dist.init_process_group("gloo", init_method=args.ddp, rank=rank, world_size=world)
        recorder.write("process group")
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], **GROUPS[0]}, {"params": [model.bias], **GROUPS[1]}],
        lr=GROUPS[0]["lr"],
        momentum=GROUPS[0]["momentum"],
    )
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if args.ddp else model
    recorder.write("model")
    client = Client(
        args.target,
        timeout=2.0,
        backoff_max=0.3,
        plan_size=2,
        max_plan_size=4,
        prefetch_seconds=0.1,
        wait_timeout=60.0,
        report_interval=0.2,
        load_balancing="round_robin" if "," in args.target else None,
    )

    def rejoin(handle: ScheduleHandle | None) -> tuple[ScheduleHandle, int]:
        """Attach again (without config) and resume from the checkpoint in the resume
        file: model, optimizer and schedule all roll back to its iteration."""
        if handle is not None:
            handle.detach()
        _wait_for_file(args.resume_file, 60.0)
        path = Path(json.loads(args.resume_file.read_text())["checkpoint"])
        ckpt = torch.load(path, weights_only=True)
        handle = client.attach(optimizer, args.job, rank=rank, world_size=world)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        handle.load_state_dict(ckpt["scheduler"])
        recorder.write("resumed", t=handle.iteration, gen=handle.generation, checkpoint=str(path))
        return handle, handle.iteration

    if args.standby:
        _wait_for_file(args.standby, 60.0)
        handle, t = rejoin(None)
    else:
        handle = client.attach(
            optimizer, args.job, SCHEDULE, epoch_length=EPOCH_LENGTH, max_epochs=MAX_EPOCHS,
            rank=rank, world_size=world,
        )
        recorder.write("attached", gen=handle.generation)
        t = 0
    while True:
        try:
            while t < MAX_ITERS:
                recorder.values(t, optimizer, handle.generation)
                gen = torch.Generator().manual_seed(rank * 100_003 + t)
                x, y = torch.randn(8, 8, generator=gen), torch.randn(8, 1, generator=gen)
                loss = nn.functional.mse_loss(net(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if (t + 1) % EPOCH_LENGTH == 0:
                    epoch = (t + 1) // EPOCH_LENGTH - 1
                    handle.end_epoch(METRICS[epoch])
                    if args.checkpoint_dir is not None:
                        state = {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": handle.state_dict(),
                        }
                        _save_atomically(state, args.checkpoint_dir / f"ckpt-{t + 1}.pt")
                t += 1
                time.sleep(args.step_sleep)
            recorder.values(t, optimizer, handle.generation)
            if args.resume_file is not None:
                # The job may have been resumed elsewhere after this rank's last report:
                # then this run counts for nothing and the rank must rejoin too.
                current = client.get_job(args.job).generation
                if current != handle.generation:
                    recorder.write("fenced at the end", gen=handle.generation, job_gen=current)
                    handle, t = rejoin(handle)
                    continue
            break
        except StaleGenerationError as exc:
            recorder.error(exc, f"iteration {t}")
            if args.resume_file is None:
                raise
            handle, t = rejoin(handle)
    handle.detach()
    client.close()
    if args.ddp:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_records(path: Path) -> list[dict[str, Any]]:
    """A record file's complete lines (a line being written is left for later)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            out.append(json.loads(line))
    return out


def row(record: dict[str, Any]) -> Row:
    return tuple(tuple(float(v) for v in group) for group in record["values"])


class RankProcess:
    """One rank process: its record file and log."""

    def __init__(self, rank: int, work: Path, tag: str, args: Sequence[str]) -> None:
        self.rank = rank
        self.record = work / f"rank{rank}-{tag}.jsonl"
        self.log_path = work / f"rank{rank}-{tag}.log"
        command = [sys.executable, str(Path(__file__).resolve()), "--rank", str(rank),
                   "--record", str(self.record), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=ROOT)

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.record)

    def last_iteration(self) -> int:
        """The last iteration this process started (-1: none yet)."""
        done = [r["t"] for r in self.records() if r["kind"] == "values"]
        return done[-1] if done else -1

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the rank dies mid-step, without detaching."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def describe(self) -> str:
        log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        tail = [json.dumps(r) for r in self.records() if r["kind"] != "values"][-10:]
        return (f"--- rank {self.rank} pid {self.proc.pid} rc={self.proc.poll()} "
                f"last iteration {self.last_iteration()}\n{log}\n" + "\n".join(tail))


class Ranks:
    """The rank processes of one run, and waits on their progress."""

    def __init__(self, work: Path, deadline: float) -> None:
        self.work = work
        self.deadline = time.monotonic() + deadline
        self.procs: list[RankProcess] = []

    def launch(self, rank: int, tag: str, args: Sequence[str]) -> RankProcess:
        proc = RankProcess(rank, self.work, tag, args)
        self.procs.append(proc)
        return proc

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.procs)

    def wait(self, condition: Callable[[], bool], what: str,
             watch: Sequence[RankProcess] = ()) -> None:
        """Poll ``condition`` until it holds; fail (with every rank's log) if a watched
        process exits first or the run's deadline passes."""
        while not condition():
            dead = [p for p in watch if not p.alive()]
            if dead or time.monotonic() > self.deadline:
                why = f"rank {dead[0].rank} exited" if dead else "the run's deadline passed"
                raise AssertionError(f"waiting for {what}: {why}\n{self.describe()}")
            time.sleep(0.01)

    def wait_iteration(self, procs: Sequence[RankProcess], iteration: int) -> list[int]:
        """Wait until every one of ``procs`` started ``iteration``; their iterations."""
        self.wait(lambda: min(p.last_iteration() for p in procs) >= iteration,
                  f"every rank at iteration {iteration}", watch=procs)
        return [p.last_iteration() for p in procs]

    def finish(self, procs: Sequence[RankProcess]) -> None:
        """Wait for ``procs`` to exit; every one must exit 0."""
        self.wait(lambda: all(not p.alive() for p in procs), "the ranks to finish")
        failed = [p for p in procs if p.proc.returncode != 0]
        assert not failed, f"ranks failed:\n{self.describe()}"

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()


@contextlib.contextmanager
def ranks(work: Path, deadline: float) -> Iterator[Ranks]:
    group = Ranks(work, deadline)
    try:
        yield group
    finally:
        group.close()


if __name__ == "__main__":
    sys.exit(rank_main())
