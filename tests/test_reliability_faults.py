"""Faults during a 4-rank run: two ``paramsched serve`` processes on one Redis (AOF).

The ranks are real processes (``fault_harness.py``) training a tiny model with a config
that has an iteration scheduler (LinearLR warm-up), epoch schedulers (momentum, weight
decay) and ReduceOnPlateau (every rank ends every epoch with the same metrics). Each
rank records the values its optimizer held before every step. Faults are injected when
the ranks' recorded iteration passes given points, so each lands while they train:

* ``test_server_kill_redis_restart_and_stall_during_a_ddp_run`` (4 DDP ranks, gloo):
  kill -9 server A (rank 0 uses only A and waits for its restart on the same port;
  ranks 2 and 3 balance round-robin over A and B, so their calls go to B meanwhile;
  DDP holds every rank at rank 0's pace), restart Redis gracefully
  (stop + start, same port and dir), stall Redis (SIGSTOP for 3 s, then SIGCONT).
  While each fault lasts, a probe client with a short ``wait_timeout`` collects the
  error a caller gets.
* ``test_dropped_rank_rejoins_from_rank0_checkpoint``: rank 3 is killed mid-epoch and
  a new process takes its place. The ranks are independent processes here, not DDP: a
  gloo group cannot admit a new member, and its survivors fail on the dead peer. The
  client offers one way for a rank to join a running job anywhere but at iteration 0:
  ``load_state_dict`` of a checkpoint (rank 0 writes one every epoch), which starts a
  new generation; the survivors then get ``StaleGenerationError`` and, as its message
  says, rejoin from the same checkpoint (loading it again does not bump the
  generation again), so every rank runs the curve on from there.
* ``test_checkpoint_of_a_rank_fenced_by_a_rejoin_keeps_its_decisions``: the same
  rejoin, two ranks in one process, timed exactly: a survivor that checkpoints after the
  rejoin and before it learns it is fenced.

Afterwards, for every run: all ranks saw bit-identical values at every iteration they
ran (in every generation), those values are MMEngine's for the same config and metrics,
each fault held the ranks up (they needed the service while it lasted),
GetValues on both servers gives the same curve, GetState's decisions are exactly the
metrics the ranks sent (those acknowledged before a fault are still there), the job's
progress has every rank at the last iteration, and every client error message seen
(ranks' and probes') names the server it talked to and the job.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from paramsched import Client
from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.client import ParamschedError, ScheduleUnavailableError, StaleGenerationError

from fault_harness import (
    EPOCH_LENGTH,
    GROUPS,
    MAX_EPOCHS,
    MAX_ITERS,
    METRICS,
    NAMES,
    SCHEDULE,
    RankProcess,
    Row,
    free_port,
    ranks,
    row,
)
from oracle_mmengine import first_mismatch, mmengine_curves
from process_harness import ServerProcess
from redis_harness import RedisServer

pytestmark = pytest.mark.timeout(300)

STEP_SLEEP = 0.05  # per step: a run takes a few seconds, so every fault lands mid-run
RUN_DEADLINE = 150.0  # seconds for one run's ranks; only bounds a hang (a run takes ~20 s)
STALL_SECONDS = 3.0


@cache
def expected_curve() -> tuple[Row, ...]:
    """MMEngine's values for the job, iteration 0..MAX_ITERS, as rows like the records."""
    result = mmengine_curves(SCHEDULE, GROUPS, EPOCH_LENGTH, MAX_EPOCHS, None, METRICS)
    assert result.ok, result.error
    assert result.param_names == list(NAMES)
    return tuple(tuple(tuple(g[n] for n in NAMES) for g in t) for t in result.curves)


class Cluster:
    """One Redis (AOF, appendfsync always) and two server processes on it."""

    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer(data_dir=tmp / "redis")
        self.a = ServerProcess(data_dir=tmp / "a", redis_url=self.redis.url).start()
        self.b = ServerProcess(data_dir=tmp / "b", redis_url=self.redis.url).start()

    @property
    def targets(self) -> tuple[str, str]:
        return self.a.target, self.b.target

    @property
    def balanced(self) -> str:
        """Both servers as one gRPC target (the client balances round-robin over it)."""
        return "ipv4:" + ",".join(self.targets)

    def close(self) -> None:
        for server in (self.a, self.b):
            server.stop()
        self.redis.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    try:
        running = Cluster(tmp_path)
    except RuntimeError as exc:  # no redis-server: the harness says how to install it
        pytest.fail(str(exc))
    try:
        yield running
    finally:
        running.close()


def _job() -> str:
    return f"faults-{uuid.uuid4().hex[:10]}"


def _state(target: str, job: str) -> dict[str, Any]:
    """GetState at the end of training (what a checkpoint would hold)."""
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.SchedulerServiceStub(channel).GetState(
            pb.GetStateRequest(job_id=job, iteration=MAX_ITERS), timeout=10)
    state: dict[str, Any] = json.loads(json.loads(reply.state_json)["payload"])
    state.pop("saved_at")  # when GetState ran, not the job's state
    return state


def _decisions(target: str, job: str) -> dict[int, Any]:
    return {int(e): m for e, m in _state(target, job)["decisions"].items()}


def _probe(target: str, job: str, call: str) -> str:
    """What a caller gets from ``target`` while a fault lasts: it must be an error."""
    with Client(target, timeout=0.3, backoff_max=0.2, wait_timeout=1.0) as client:
        try:
            if call == "get_values":
                client.get_values(job, 0, 4)
            else:
                client.get_job(job)
        except ParamschedError as exc:
            assert isinstance(exc, ScheduleUnavailableError), repr(exc)
            return str(exc)
    raise AssertionError(f"{call} on {target} answered during the fault")


def _mid_run(iterations: list[int], what: str) -> None:
    assert all(0 < t < MAX_ITERS for t in iterations), f"{what} did not land mid-run: {iterations}"


def _felt(procs: list[RankProcess], fault: str, start: float, end: float) -> None:
    """The fault held every rank up: plans last at most 4 iterations and every epoch end
    waits for a decision, so a rank needs the service within a fraction of a second;
    it must have spent most of the fault waiting between two steps."""
    for proc in procs:
        times = [r["time"] for r in proc.records() if r["kind"] == "values"]
        waited = max(min(b, end) - max(a, start) for a, b in pairwise(times))
        assert waited >= 0.4 * (end - start), (
            f"{fault} ({end - start:.1f}s) held rank {proc.rank} up for only {waited:.2f}s")


# --------------------------------------------------------------------------- checks


def _check_values(procs: list[RankProcess]) -> dict[int, set[int]]:
    """Every recorded value equals MMEngine's curve, and every rank recorded the same
    values at every iteration (bit for bit, whatever the generation). Returns the
    iterations each rank recorded."""
    expected = expected_curve()
    seen: dict[int, tuple[int, Row]] = {}
    covered: dict[int, set[int]] = {}
    for proc in procs:
        for record in proc.records():
            if record["kind"] != "values":
                continue
            t, values = record["t"], row(record)
            first = seen.setdefault(t, (proc.rank, values))
            assert values == first[1], (
                f"iteration {t}: rank {proc.rank} (pid {record['pid']}, generation "
                f"{record['gen']}) held {values}, rank {first[0]} held {first[1]}")
            covered.setdefault(proc.rank, set()).add(t)
    assert sorted(seen) == list(range(MAX_ITERS + 1)), sorted(seen)
    recorded = [[dict(zip(NAMES, g, strict=True)) for g in seen[t][1]] for t in sorted(seen)]
    curve = [[dict(zip(NAMES, g, strict=True)) for g in t] for t in expected]
    problem = first_mismatch(curve, recorded, list(NAMES))
    assert problem is None, f"the ranks' values differ from MMEngine's: {problem}"
    return covered


def _check_store(cluster: Cluster, job: str, world: int,
                 earlier: list[dict[int, Any]]) -> None:
    """No acknowledged state was lost: decisions, progress, and the curve both servers
    compute from the stored record."""
    decisions = _decisions(cluster.a.target, job)
    # One decision per epoch but the last: after the last epoch ReduceOnPlateau is past
    # its window (end = max_epochs), so that epoch's metrics decide nothing.
    assert decisions == {e: METRICS[e] for e in range(MAX_EPOCHS - 1)}, decisions
    assert _decisions(cluster.b.target, job) == decisions
    for before in earlier:  # decisions acknowledged before each fault are still there
        assert before.items() <= decisions.items(), (before, decisions)
    expected = [[dict(zip(NAMES, g, strict=True)) for g in t] for t in expected_curve()]
    with Client(cluster.a.target) as client:
        record = client.get_job(job)
        for target in cluster.targets:
            with Client(target) as other:
                problem = first_mismatch(expected, other.get_values(job), list(NAMES))
            assert problem is None, f"GetValues on {target}: {problem}"
    progress = {p.rank: p.iteration for p in record.progress}
    assert progress == dict.fromkeys(range(world), MAX_ITERS), progress


def _check_messages(messages: list[tuple[str, str]], cluster: Cluster, job: str) -> None:
    """Every client error message names the server it talked to and the job."""
    for origin, message in messages:
        assert any(t in message for t in cluster.targets), (
            f"{origin}: the error message names no server ({cluster.targets}): {message}")
        assert repr(job) in message or job in message, (
            f"{origin}: the error message does not name job {job!r}: {message}")


def _rank_errors(procs: list[RankProcess]) -> list[tuple[str, str]]:
    return [(f"rank {p.rank} (pid {r['pid']}) {r['type']} at {r['where']}", r["message"])
            for p in procs for r in p.records() if r["kind"] == "error"]


# --------------------------------------------------------------------------- tests


def test_server_kill_redis_restart_and_stall_during_a_ddp_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = _job()
    init = f"tcp://127.0.0.1:{free_port()}"
    a, b, both = cluster.a.target, cluster.b.target, cluster.balanced
    targets = [a, b, both, both]  # rank 0 only on A: it must wait for A's restart
    messages: list[tuple[str, str]] = []
    snapshots: list[dict[int, Any]] = []
    with ranks(tmp_path, RUN_DEADLINE) as group:
        procs = [
            group.launch(r, "ddp", ["--target", targets[r], "--job", job, "--ddp", init,
                                    "--step-sleep", str(STEP_SLEEP)])
            for r in range(4)
        ]
        expected_curve()  # MMEngine's curve, computed while the ranks start

        # 1. kill -9 server A mid-epoch 1 (after epoch 0's decision), restart it in 1 s.
        _mid_run(group.wait_iteration(procs, 12), "kill -9 of server A")
        snapshots.append(_decisions(b, job))
        killed = time.time()
        cluster.a.kill()
        assert cluster.a.proc is not None and cluster.a.proc.returncode == -9
        messages.append(("probe while A is down", _probe(a, job, "get_job")))
        time.sleep(max(0.0, killed + 1.0 - time.time()))
        cluster.a.restart()
        faults = [("kill -9 of server A", killed, time.time())]

        # 2. restart Redis gracefully (SHUTDOWN flushes the AOF), same port and dir.
        _mid_run(group.wait_iteration(procs, 34), "the Redis restart")
        snapshots.append(_decisions(b, job))
        stopped = time.time()
        cluster.redis.stop()
        messages.append(("probe while Redis is down", _probe(b, job, "get_values")))
        time.sleep(max(0.0, stopped + 1.5 - time.time()))
        cluster.redis.start()
        faults.append(("the Redis restart", stopped, time.time()))

        # 3. stall Redis: SIGSTOP, 3 s, SIGCONT.
        _mid_run(group.wait_iteration(procs, 54), "the Redis stall")
        snapshots.append(_decisions(a, job))
        stalled = time.time()
        cluster.redis.pause()
        try:
            messages.append(("probe while Redis is stalled", _probe(a, job, "get_job")))
            time.sleep(max(0.0, stalled + STALL_SECONDS - time.time()))
        finally:
            cluster.redis.resume()
        faults.append(("the Redis stall", stalled, time.time()))
        _mid_run([min(p.last_iteration() for p in procs)], "the end of the Redis stall")

        group.finish(procs)
        messages += _rank_errors(procs)

    covered = _check_values(procs)
    assert all(covered[r] == set(range(MAX_ITERS + 1)) for r in range(4)), covered
    assert all(all(r["gen"] == 1 for r in p.records() if r["kind"] == "values") for p in procs)
    for fault in faults:
        _felt(procs, *fault)
    _check_store(cluster, job, 4, snapshots)
    _check_messages(messages, cluster, job)


def test_dropped_rank_rejoins_from_rank0_checkpoint(cluster: Cluster, tmp_path: Path) -> None:
    job = _job()
    a, b, both = cluster.a.target, cluster.b.target, cluster.balanced
    ckpt_dir, resume, go = tmp_path / "ckpt", tmp_path / "resume.json", tmp_path / "go"
    ckpt_dir.mkdir()
    common = ["--job", job, "--step-sleep", str(STEP_SLEEP), "--resume-file", str(resume)]
    with ranks(tmp_path, RUN_DEADLINE) as group:
        procs = [
            group.launch(r, "first", ["--target", target, *common,
                                      *(["--checkpoint-dir", str(ckpt_dir)] if r == 0 else [])])
            for r, target in enumerate([a, b, both, b])
        ]
        # The new rank 3 starts now and waits: torch's import is not what is timed.
        spare = group.launch(3, "rejoined", ["--target", a, *common, "--standby", str(go)])
        expected_curve()

        # Drop rank 3 mid-epoch 2 (SIGKILL: no detach, no goodbye).
        _mid_run(group.wait_iteration(procs, 2 * EPOCH_LENGTH + 4), "dropping rank 3")
        procs[3].kill()
        last = procs[3].last_iteration()
        # Rank 3 rejoins from rank 0's newest checkpoint at or before its last iteration.
        group.wait(lambda: (ckpt_dir / f"ckpt-{2 * EPOCH_LENGTH}.pt").exists(),
                   "rank 0's checkpoint", watch=procs[:3])
        resume_at = max(n for n in range(EPOCH_LENGTH, last + 1, EPOCH_LENGTH)
                        if (ckpt_dir / f"ckpt-{n}.pt").exists())
        (tmp_path / "resume.tmp").write_text(
            json.dumps({"checkpoint": str(ckpt_dir / f"ckpt-{resume_at}.pt")}))
        (tmp_path / "resume.tmp").replace(resume)
        go.touch()
        survivors = [*procs[:3], spare]
        group.wait(lambda: any(r["kind"] == "resumed" for r in spare.records()),
                   "rank 3 to rejoin", watch=survivors)
        at_rejoin = [p.last_iteration() for p in procs[:3]]
        # Two epoch ends still ahead: the survivors' end_epoch reports reach the server.
        assert max(at_rejoin) < MAX_ITERS - 2 * EPOCH_LENGTH, f"rejoined too late: {at_rejoin}"

        group.finish(survivors)
        messages = _rank_errors([*procs, spare])

    # Every process that resumed did so at the checkpoint's iteration, in generation 2:
    # the first load started it, the others joined it.
    for proc in survivors:
        resumed = [r for r in proc.records() if r["kind"] == "resumed"]
        assert resumed, f"rank {proc.rank} never rejoined\n{proc.describe()}"
        assert {(r["t"], r["gen"]) for r in resumed} == {(resume_at, 2)}, resumed
    with Client(a) as client:
        assert client.get_job(job).generation == 2
    covered = _check_values([*procs, spare])
    assert all(covered[r] == set(range(MAX_ITERS + 1)) for r in range(4)), covered
    _check_store(cluster, job, 4, [])
    told = {int(o.split()[1]) for o, _ in messages if "StaleGenerationError" in o}
    assert told == {0, 1, 2}, messages  # every survivor was told it was fenced
    _check_messages(messages, cluster, job)


def test_checkpoint_of_a_rank_fenced_by_a_rejoin_keeps_its_decisions(tmp_path: Path) -> None:
    """A survivor that checkpoints after a rejoin started a new generation, before its
    next report tells it so, must not get a checkpoint that silently drops the decisions
    it had acknowledged (found while building the rejoin test above; in the 4-rank run
    the window is the time between rank 0's end_epoch and its state_dict).

    Two ranks in one process, reports only on demand (``report_interval`` 60 s): both
    run 4 epochs (rank 0's plateau decisions of epochs 2 and 3 are acknowledged in
    generation 1), rank 1 is replaced by a handle that loads rank 0's checkpoint of
    iteration 16 (generation 2), then rank 0 checkpoints at iteration 32. Either that
    raises StaleGenerationError, or the checkpoint resumes iteration 32 with every
    decision before it.
    """
    def optimizer() -> torch.optim.Optimizer:
        groups: list[dict[str, Any]] = [
            {"params": [torch.nn.Parameter(torch.zeros(2))], **g} for g in GROUPS]
        return torch.optim.SGD(groups, lr=GROUPS[0]["lr"], momentum=GROUPS[0]["momentum"])

    job, until = _job(), 4 * EPOCH_LENGTH
    with (
        ServerProcess(data_dir=tmp_path / "server").start() as server,
        Client(server.target, report_interval=60.0, wait_timeout=10.0) as client,
    ):
        opts = [optimizer(), optimizer()]
        handles = [client.attach(o, job, SCHEDULE, epoch_length=EPOCH_LENGTH,
                                 max_epochs=MAX_EPOCHS, rank=r, world_size=2, run_id="faults")
                   for r, o in enumerate(opts)]
        checkpoint: dict[str, Any] = {}
        for t in range(until):
            for o, h in zip(opts, handles, strict=True):
                o.step()
                if (t + 1) % EPOCH_LENGTH == 0:
                    h.end_epoch(METRICS[(t + 1) // EPOCH_LENGTH - 1])
            if t + 1 == 2 * EPOCH_LENGTH:
                checkpoint = handles[0].state_dict()
        handles[1].detach()  # rank 1 drops; its replacement rejoins from the checkpoint
        rejoined = client.attach(optimizer(), job, rank=1, world_size=2, run_id="faults")
        rejoined.load_state_dict(checkpoint)
        assert (rejoined.iteration, rejoined.generation) == (2 * EPOCH_LENGTH, 2)
        try:
            late = handles[0].state_dict()
        except StaleGenerationError:
            return  # fenced: the rank learns it must rejoin, no checkpoint is written
        state = json.loads(json.loads(late["state_json"])["payload"])
        decided = sorted(int(e) for e in state["decisions"])
        assert late["iteration"] == until
        assert decided == list(range(until // EPOCH_LENGTH)), (
            f"rank 0 (generation {late['generation']}, at iteration {until}, its decisions of "
            f"epochs 0-3 acknowledged) got a checkpoint of generation {state['generation']} "
            f"for iteration {state['iteration']} with decisions only for epochs {decided}: "
            "loading it resumes without them (other values, then DecisionRequiredError). "
            "state_dict() should raise StaleGenerationError (GetState carries no generation, "
            "and the client does not compare the state's with its own)")
