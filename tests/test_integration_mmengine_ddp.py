"""The distributed Runner: ``examples/train_mmengine.py`` with 2 ranks (real processes,
gloo on CPU) against a real ``paramsched serve``, every rank joining the same job; what
each rank's optimizer held before every iteration equals the stock Runner's, rank for
rank (and ReduceOnPlateau, fed the metrics the Evaluator gathers from both ranks, cuts
the lr on both at once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cv2", reason="MMEngine's Runner imports cv2 (opencv-python-headless)")
pytest.importorskip("torch")
pytest.importorskip("mmengine")

from process_harness import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "train_mmengine.py"


def train(target: str, work: Path, *args: str) -> list[list]:
    record = work / "record"
    record.mkdir(parents=True)
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), target, "--work-dir", str(work / "run"),
         "--record", str(record), *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(record.glob("rank*.json"))]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(data_dir=tmp_path_factory.mktemp("store")).start() as served:
        yield served


def test_two_ranks_of_the_distributed_runner_equal_the_stock_runner(server, tmp_path):
    stock = train(server.target, tmp_path / "stock", "--world-size", "2", "--stock")
    ours = train(server.target, tmp_path / "ours", "--world-size", "2",
                 "--job-id", "mm-ddp-example")
    assert len(ours) == 2 and len(ours[0]) == 16  # 2 ranks, 4 epochs of 4 iterations
    assert ours == stock and ours[0] == ours[1]
    lrs = [row[-1]["lr"] for row in ours[0]]  # the base group: the config's lr
    # warm-up to 0.05, MultiStep halves it at epoch 3, and the plateau cuts it too
    assert lrs[0] < lrs[5] == 0.05 and lrs[-1] <= 0.0125

