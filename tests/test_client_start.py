"""The first iterations of an attached loop, and a script resumed after its job ended.

* Start-up: ``attach`` sends a priming refill before it returns, so a fast loop's
  first plan is followed by a longer one without waiting (the whole-job figure of
  ``benchmarks/bench_client_overhead.py`` measures what this buys).
* A finished job resumed again (``examples/train_single.py`` run a second time on the
  checkpoint of a completed run) says that the job finished at iteration N.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from paramsched import Client
from paramsched.client.plan import PlanSizer

from process_harness import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
CONFIG = [
    {"type": "LinearLR", "start_factor": 0.01, "by_epoch": False, "begin": 0, "end": 50},
    {"type": "CosineAnnealingLR", "by_epoch": False, "begin": 50, "end": 2000},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(data_dir=tmp_path_factory.mktemp("server")).start() as served:
        yield served


def _optimizer() -> torch.optim.Optimizer:
    model = torch.nn.Linear(4, 4)
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_the_first_refill_is_asked_at_attach_and_sized_ahead() -> None:
    sizer = PlanSizer(256, 4096, 2.0)
    assert sizer.first == 1024  # four attach-sized plans
    assert PlanSizer(256, 512, 2.0).first == 512  # never above max_plan_size
    assert PlanSizer(4, 4096, 2.0).first == 16


def test_attach_primes_a_longer_plan_before_the_loop_starts(server: ServerProcess) -> None:
    with Client(server.address, plan_size=64) as client:
        opt = _optimizer()
        handle = client.attach(opt, f"start-{uuid.uuid4().hex[:8]}", CONFIG, max_iters=2000)
        # The attach's plan has 64 iterations; the priming refill (4 x 64) was on the
        # wire when attach returned and lands without a single step being run.
        deadline = time.monotonic() + 10
        while handle._plan.n < 256 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handle.iteration == 0
        assert handle._plan.start == 0 and handle._plan.n == 4 * 64
        for _ in range(300):  # past both plans: later refills keep it covered
            opt.step()
        assert handle.iteration == 300
        handle.detach()


def test_a_finished_example_resumed_again_says_so(server: ServerProcess,
                                                   tmp_path: Path) -> None:
    script = str(ROOT / "examples" / "train_single.py")
    ckpt, job = tmp_path / "ckpt.pt", f"example-done-{uuid.uuid4().hex[:8]}"

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script, server.address, "--job-id", job, "--epochs", "2",
             "--checkpoint", str(ckpt)], capture_output=True, text=True, timeout=120)

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(first.stdout.splitlines()) == 2  # one line per epoch
    again = run()
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith(f"job {job!r} finished at iteration 20 "), again.stdout
    assert "nothing left to train" in again.stdout
