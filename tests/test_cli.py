"""The ``paramsched`` client commands: argument mapping, config files, plots, and the
commands end to end against a real in-process server."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import paramsched.cli as cli
from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.cli import curves as cli_curves
from paramsched.cli import main, make_parser
from paramsched.client import admin as client_admin
from paramsched.server.schedules import Timeline, build_job_spec

from grpc_harness import InProcessServer
from test_service_grpc import GROUPS, WARMUP_COSINE, decode, engine_values, spec_proto

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPLACE, MULTIPLY, STRETCH = (pb.RescheduleJobRequest.REPLACE, pb.RescheduleJobRequest.MULTIPLY,
                              pb.RescheduleJobRequest.STRETCH)


def paramsched(*argv: str) -> int:
    """``paramsched ARGV`` in this process, through the real entry point; the root
    logger's handlers (which ``main`` reconfigures) are put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return main(list(argv))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def request_for(*argv: str) -> pb.RescheduleJobRequest:
    return cli.build_request(make_parser().parse_args(list(argv)))


def test_the_cli_talks_grpc_only_and_loads_plotting_lazily(tmp_path: Path):
    """Top layer: the CLI reaches the server over gRPC, never through its service or
    store; matplotlib and PyYAML load only when a plot or YAML file needs them."""
    code = ("import sys, paramsched.cli; "
            "bad = sorted(m for m in sys.modules if m.startswith(('paramsched.server.service', "
            "'paramsched.server.store', 'paramsched.server.grpc', 'matplotlib', 'yaml', 'torch')));"
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- argument mapping ----------------------------------------------------------------
@pytest.mark.parametrize(("argv", "expected"), [
    (["set", "j", "lr", "0.01", "--from", "40", "--groups", "0,1", "--reason", "spike"],
     pb.RescheduleJobRequest(job_id="j", from_iteration=40, mode=REPLACE, param_scheduler_json="[]",
                             params=["lr"], groups=[0, 1], start_values={"lr": 0.01},
                             action="set", reason="spike")),
    (["scale", "j", "lr", "0.5"],
     pb.RescheduleJobRequest(job_id="j", mode=MULTIPLY, param_scheduler_json="[]", params=["lr"],
                             start_values={"lr": 0.5}, action="scale")),
    (["hold", "j", "momentum", "--dry-run"],
     pb.RescheduleJobRequest(job_id="j", mode=REPLACE, param_scheduler_json="[]",
                             params=["momentum"], dry_run=True, action="hold")),
    (["decay", "j", "lr", "--to", "1e-5", "--over", "1000", "--force"],
     pb.RescheduleJobRequest(
         job_id="j", mode=REPLACE, params=["lr"], force=True, action="decay",
         param_scheduler_json=json.dumps([{"type": "PolyParamScheduler", "param_name": "lr",
                                            "eta_min": 1e-5, "power": 1.0, "by_epoch": False,
                                            "end": 1001}]))),
    (["decay", "j", "lr", "--to", "0", "--over", "50", "--shape", "cosine", "--groups", "1"],
     pb.RescheduleJobRequest(
         job_id="j", mode=REPLACE, params=["lr"], groups=[1], action="decay",
         param_scheduler_json=json.dumps([{"type": "CosineAnnealingParamScheduler",
                                            "param_name": "lr", "T_max": 50, "eta_min": 0.0,
                                            "by_epoch": False, "end": 51}]))),
    (["rewarm", "j", "lr", "--from-factor", "0.1", "--over", "200", "--from", "300"],
     pb.RescheduleJobRequest(
         job_id="j", from_iteration=300, mode=MULTIPLY, params=["lr"], action="rewarm",
         param_scheduler_json=json.dumps([{"type": "LinearParamScheduler", "param_name": "lr",
                                            "start_factor": 0.1, "end_factor": 1.0,
                                            "by_epoch": False, "end": 201}]))),
    (["extend", "j", "--max-iters", "5000"],
     pb.RescheduleJobRequest(job_id="j", mode=STRETCH, param_scheduler_json="[]", max_iters=5000,
                             action="extend")),
    (["reschedule", "j", "--json", '[{"type": "ConstantLR", "factor": 0.5, "by_epoch": false}]',
      "--mode", "multiply", "--params", "lr,momentum", "--start", "lr=2", "--max-iters", "90",
      "--from", "0"],
     pb.RescheduleJobRequest(
         job_id="j", from_iteration=0, mode=MULTIPLY, params=["lr", "momentum"],
         start_values={"lr": 2.0}, max_iters=90, action="reschedule",
         param_scheduler_json='[{"type": "ConstantLR", "factor": 0.5, "by_epoch": false}]')),
])
def test_each_change_command_is_one_reschedule_request(argv: list[str],
                                                       expected: pb.RescheduleJobRequest):
    request = request_for(*argv)
    assert request == expected, f"{request}\n!=\n{expected}"


def test_absent_from_leaves_the_iteration_to_the_server():
    assert not request_for("set", "j", "lr", "0.1").HasField("from_iteration")
    assert not request_for("set", "j", "lr", "0.1").HasField("max_iters")


def test_reschedule_reads_configs_from_a_file(tmp_path: Path):
    path = tmp_path / "change.yaml"
    path.write_text("- type: PolyParamScheduler\n  param_name: lr\n  eta_min: 1e-6\n"
                    "  by_epoch: false\n  end: 11\n")
    request = request_for("reschedule", "j", "--config", str(path))
    assert json.loads(request.param_scheduler_json) == [dict(
        type="PolyParamScheduler", param_name="lr", eta_min=1e-6, by_epoch=False, end=11)]
    assert request.mode == REPLACE and request.action == "reschedule"


@pytest.mark.parametrize("argv", [
    ["rewarm", "j", "lr", "--from-factor", "0", "--over", "5"],   # MMEngine: 0 < F <= 1
    ["rewarm", "j", "lr", "--from-factor", "1.5", "--over", "5"],
    ["decay", "j", "lr", "--to", "0", "--over", "0"],
    ["decay", "j", "lr", "--over", "10"],                        # --to is required
    ["set", "j", "lr", "abc"],
    ["set", "j", "lr", "nan"],
    ["scale", "j", "lr", "-1"],
    ["set", "j", "lr", "1", "--from", "-3"],
    ["set", "j", "lr", "1", "--groups", "a,b"],
    ["reschedule", "j", "--json", "[]", "--config", "x.json"],
    ["reschedule", "j", "--mode", "shift"],
    ["extend", "j"],
    ["plot", "c.json", "--epochs", "2", "--max-iters", "5"],
    ["plot", "c.json", "--base", "lr"],
    ["jobs"],
])
def test_bad_command_lines_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        paramsched(*argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["plot", "--out", "x.png"], "CONFIG file or --job"),
    (["plot", "c.json", "--job", "j", "--out", "x.png"], "CONFIG file or --job"),
    (["plot", "c.json", "--epochs", "2"], "nothing to write"),
    (["plot", "missing.json", "--epochs", "2", "--epoch-length", "3", "--csv", "x.csv"],
     "cannot read"),
    (["reschedule", "j", "--json", "{oops"], "invalid JSON"),
    (["set", "j", "lr", "1", "--tls-cert", "c.pem"], "--tls-key"),
])
def test_bad_input_beyond_argparse_is_exit_2_without_traceback(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert paramsched(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- config files --------------------------------------------------------------------
PY_CONFIG = """
from types import SimpleNamespace
LinearLR = type("LinearLR", (), {})   # new-style configs reference classes
param_scheduler = [
    dict(type=LinearLR, start_factor=0.01, by_epoch=False, end=7),
    dict(type='CosineAnnealingLR', T_max=4, by_epoch=True, convert_to_iter_based=True),
    dict(type='StepMomentum', step_size=2, gamma=0.5),
]
optim_wrapper = dict(type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4))
train_cfg = dict(by_epoch=True, max_epochs=4, val_interval=1)
"""
CONFIG_AS_JSON = [
    {"type": "LinearLR", "start_factor": 0.01, "by_epoch": False, "end": 7},
    {"type": "CosineAnnealingLR", "T_max": 4, "by_epoch": True, "convert_to_iter_based": True},
    {"type": "StepMomentum", "step_size": 2, "gamma": 0.5},
]
YAML_CONFIG = """
param_scheduler:
  - {type: LinearLR, start_factor: 1e-2, by_epoch: false, end: 7}
  - {type: CosineAnnealingLR, T_max: 4, by_epoch: true, convert_to_iter_based: true}
  - {type: StepMomentum, step_size: 2, gamma: 0.5}
"""


@pytest.mark.parametrize(("name", "text"), [
    ("cfg.py", PY_CONFIG),
    ("cfg.json", json.dumps(CONFIG_AS_JSON)),
    ("cfg.json", json.dumps({"param_scheduler": CONFIG_AS_JSON})),
    ("cfg.yaml", YAML_CONFIG),  # YAML 1.1 reads 1e-2 as a string; we read a number
    ("cfg.yml", "- " + json.dumps(CONFIG_AS_JSON[0]) + "\n- " + json.dumps(CONFIG_AS_JSON[1])
     + "\n- " + json.dumps(CONFIG_AS_JSON[2]) + "\n"),
])
def test_config_files_python_json_yaml_give_the_same_schedulers(tmp_path: Path, name: str,
                                                                 text: str):
    path = tmp_path / name
    path.write_text(text)
    config = cli.load_config(path)
    assert config.param_scheduler == CONFIG_AS_JSON
    assert all(type(a) is type(b) for got, want in zip(config.param_scheduler, CONFIG_AS_JSON,
                                                       strict=True)
               for a, b in zip(got.values(), want.values(), strict=True))


def test_a_python_config_brings_its_optimizer_and_length(tmp_path: Path):
    path = tmp_path / "cfg.py"
    path.write_text(PY_CONFIG)
    config = cli.load_config(path)
    assert config.base == {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    assert (config.max_epochs, config.max_iters, config.optimizer) == (4, None, None)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("c.py", "x = 1\n", "no 'param_scheduler'"),
    ("c.py", "raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("c.json", '{"param_scheduler": 3}', "expected a list of scheduler config dicts"),
    ("c.yaml", "a: [1\n", "invalid YAML"),
    ("c.toml", "", "expected a .py, .json, .yaml"),
])
def test_unusable_config_files_say_why(tmp_path: Path, name: str, text: str, message: str):
    (tmp_path / name).write_text(text)
    with pytest.raises(cli.UsageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        cli.load_config(tmp_path / name)


# -- plot CONFIG (local engine) ------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def assert_csv_equals(rows: list[dict[str, str]], values: list[list[dict[str, float]]],
                      params: tuple[str, ...]) -> None:
    """Every number in the CSV is the engine's value exactly (repr round trip)."""
    groups = len(values[0])
    assert len(rows) == len(values) * groups
    for row in rows:
        t, g = int(row["iteration"]), int(row["group"])
        for p in params:
            assert row[p] == repr(values[t][g][p]), (t, g, p)
            assert float(row[p]) == values[t][g][p]


def test_plot_config_writes_a_png_and_the_engines_values(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(CONFIG_AS_JSON))
    out, table = tmp_path / "lr.png", tmp_path / "lr.csv"
    assert paramsched("plot", str(config), "--epochs", "4", "--epoch-length", "5",
                      "--base", "lr=0.1,momentum=0.9,weight_decay=1e-4",
                      "--base", "lr=0.01,momentum=0.8,weight_decay=0",
                      "--out", str(out), "--csv", str(table)) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert_png(out)
    rows = read_csv(table)
    assert list(rows[0]) == ["iteration", "epoch", "group", "lr", "momentum"]
    assert_csv_equals(rows, engine_values(CONFIG_AS_JSON), ("lr", "momentum"))
    assert [int(r["epoch"]) for r in rows[::2]] == [t // 5 for t in range(21)]


def test_plot_takes_length_and_optimizer_from_a_python_config(tmp_path: Path):
    config = tmp_path / "cfg.py"
    config.write_text(PY_CONFIG)
    table = tmp_path / "v.csv"
    assert paramsched("plot", str(config), "--epoch-length", "5", "--groups", "2",
                      "--csv", str(table)) == 0
    same_groups = [GROUPS[0], GROUPS[0]]
    assert_csv_equals(read_csv(table), engine_values(CONFIG_AS_JSON, same_groups),
                      ("lr", "momentum"))


def test_plot_adam_schedules_momentum_as_betas0_on_an_iteration_loop(tmp_path: Path):
    config = tmp_path / "m.json"
    config.write_text(json.dumps({"param_scheduler": [
        {"type": "CosineAnnealingMomentum", "T_max": 30, "eta_min": 0.85, "by_epoch": False}]}))
    table = tmp_path / "m.csv"
    assert paramsched("plot", str(config), "--max-iters", "30", "--optimizer", "adam",
                      "--base", "lr=0.001,momentum=0.95", "--csv", str(table)) == 0
    spec = build_job_spec(json.loads(config.read_text())["param_scheduler"],
                          [{"lr": 0.001, "betas": [0.95, 0.999]}], max_iters=30)
    assert spec.momentum_via_betas
    rows = read_csv(table)
    assert "epoch" not in rows[0]
    assert_csv_equals(rows, Timeline(spec).values_range(0, 31), ("momentum",))


def test_plot_a_plateau_config_as_if_no_validation_ran(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "p.json"
    config.write_text(json.dumps([{"type": "ReduceOnPlateauLR", "patience": 0}]))
    table = tmp_path / "p.csv"
    assert paramsched("plot", str(config), "--epochs", "3", "--epoch-length", "2",
                      "--csv", str(table)) == 0
    assert "ReduceOnPlateau" in capsys.readouterr().err
    assert {r["lr"] for r in read_csv(table)} == {"0.1"}


def test_plot_rejects_a_bad_config_naming_the_scheduler(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps([{"type": "StepLR", "step_size": 0, "by_epoch": False}]))
    assert paramsched("plot", str(config), "--max-iters", "9", "--csv",
                      str(tmp_path / "x.csv")) == 2
    err = capsys.readouterr().err
    assert "param_scheduler[0] (StepLR)" in err and "step_size" in err


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    config = tmp_path / "c.json"
    config.write_text(json.dumps(CONFIG_AS_JSON))
    assert paramsched("plot", str(config), "--epochs", "4", "--epoch-length", "5",
                      "--out", str(tmp_path / "x.png")) == 1
    assert "pip install 'paramsched[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_progress_bar_counts_to_the_total():
    stream = io.StringIO()
    bar = cli.ProgressBar(200, "simulating", stream=stream, enabled=True, width=10)
    for done in (50, 200):
        bar.update(done)
    bar.close()
    assert stream.getvalue() == ("\rsimulating [##........]  25% 50/200"
                                 "\rsimulating [##########] 100% 200/200\n")
    assert not cli.ProgressBar(10**6, "x", stream=io.StringIO()).enabled  # not a terminal


def test_simulate_in_chunks_equals_one_replay(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli_curves, "ENGINE_CHUNK", 7)
    spec = build_job_spec(CONFIG_AS_JSON, GROUPS, epoch_length=5, max_epochs=4)
    stream = io.StringIO()
    curves = cli.simulate(spec, cli.ProgressBar(21, "s", stream=stream, enabled=True))
    assert [list(row) for row in curves.rows] == engine_values(CONFIG_AS_JSON)
    assert stream.getvalue().count("\r") == 3  # 7, 14, 21


# -- against a real server -----------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    started = InProcessServer(data_dir=tmp_path_factory.mktemp("cli-data"), plan_size=8).start()
    yield started
    started.stop()


@pytest.fixture
def stub(server: InProcessServer) -> Iterator[pb_grpc.SchedulerServiceStub]:
    import grpc

    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


@pytest.fixture
def target(server: InProcessServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's address, as the environment gives it to every command."""
    monkeypatch.setenv("PARAMSCHED_TARGET", server.target)
    return server.target


def new_job(stub: pb_grpc.SchedulerServiceStub, job_id: str, *, reported: int = 7,
            **guardrails: Any) -> pb.Job:
    spec = spec_proto(WARMUP_COSINE)
    for name, value in guardrails.items():
        if name == "bounds":
            for param, (low, high) in value.items():
                spec.bounds[param].min, spec.bounds[param].max = low, high
        else:
            setattr(spec, name, value)
    stub.AttachJob(pb.AttachJobRequest(job_id=job_id, spec=spec, world_size=2))
    if reported:
        stub.ReportProgress(pb.ReportProgressRequest(job_id=job_id, generation=1, rank=0,
                                                     iteration=reported))
    return stub.GetJob(pb.GetJobRequest(job_id=job_id)).job


def test_jobs_list_show_and_delete(stub: pb_grpc.SchedulerServiceStub, target: str,
                                   capsys: pytest.CaptureFixture[str]):
    new_job(stub, "list-a")
    new_job(stub, "list-b", reported=0)
    assert paramsched("jobs", "list", "--prefix", "list-") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["JOB", "GEN", "ITERATION", "PLANNED", "RANKS", "CHANGES",
                                "PARAMS", "CREATED"]
    assert [line.split()[:6] for line in lines[1:]] == [
        ["list-a", "1", "7/20", "15", "1/2", "0"], ["list-b", "1", "0/20", "8", "1/2", "0"]]

    assert paramsched("jobs", "show", "list-a") == 0
    out = capsys.readouterr().out
    expected_now = engine_values(WARMUP_COSINE)[7]
    assert "generation:   1" in out and "plan horizon: 15" in out
    assert "length:       20 iterations (4 epochs of 5)" in out
    assert "rank 0: iteration 7" in out and "current values (iteration 7):" in out
    assert f"0      {expected_now[0]['lr']:.6g}" in out

    assert paramsched("jobs", "delete", "list-b") == 0
    assert "deleted job 'list-b'" in capsys.readouterr().out
    assert paramsched("jobs", "delete", "list-b") == 1
    assert paramsched("jobs", "list", "--prefix", "list-b") == 0
    assert "no jobs" in capsys.readouterr().out


def test_server_errors_print_code_and_details_and_exit_1(target: str,
                                                         capsys: pytest.CaptureFixture[str]):
    assert paramsched("jobs", "show", "no-such-job") == 1
    err = capsys.readouterr().err
    assert "error: NOT_FOUND: job 'no-such-job' does not exist" in err
    assert "Traceback" not in err


def test_an_unreachable_server_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]):
    assert paramsched("jobs", "list", "--target", "127.0.0.1:1", "--timeout", "2") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE:") and "Traceback" not in err


def test_plot_a_live_job_past_solid_future_dashed(stub: pb_grpc.SchedulerServiceStub,
                                                  target: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):
    new_job(stub, "plot-live")
    monkeypatch.setattr(client_admin, "VALUES_PER_CALL", 12)  # 3 iterations per GetValues call
    out, table = tmp_path / "live.png", tmp_path / "live.csv"
    assert paramsched("plot", "--job", "plot-live", "--out", str(out), "--csv", str(table)) == 0
    assert_png(out)
    rows = read_csv(table)
    assert_csv_equals(rows, engine_values(WARMUP_COSINE), ("lr", "momentum"))
    assert [int(r["applied"]) for r in rows[::2]] == [int(t < 7) for t in range(21)]


def test_dry_run_prints_before_and_after_and_changes_nothing(
        stub: pb_grpc.SchedulerServiceStub, target: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]):
    job = new_job(stub, "dry")
    plot = tmp_path / "before_after.png"
    assert paramsched("set", "dry", "lr", "0.003", "--dry-run", "--plot", str(plot)) == 0
    out = capsys.readouterr().out
    before = engine_values(WARMUP_COSINE)[15]
    assert "set on job 'dry' from iteration 15: dry run (nothing changed)" in out
    assert f"lr        {before[0]['lr']:.6g}  ->  0.003" in out
    assert f"lr        {before[1]['lr']:.6g}  ->  0.003" in out
    assert_png(plot)
    after = stub.GetJob(pb.GetJobRequest(job_id="dry")).job
    assert (after.version, after.num_changes) == (job.version, 0)
    plan = stub.GetValues(pb.GetValuesRequest(job_id="dry")).plan
    assert decode(plan) == engine_values(WARMUP_COSINE)
    assert stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="dry")).entries == []


def test_decay_applies_from_the_first_unplanned_iteration_and_is_in_the_history(
        stub: pb_grpc.SchedulerServiceStub, target: str, capsys: pytest.CaptureFixture[str]):
    new_job(stub, "decay")
    assert paramsched("decay", "decay", "lr", "--to", "0", "--over", "4", "--groups", "0",
                      "--reason", "loss plateau") == 0
    assert "decay on job 'decay' from iteration 15: applied" in capsys.readouterr().out
    values = decode(stub.GetValues(pb.GetValuesRequest(job_id="decay")).plan)
    base = engine_values(WARMUP_COSINE)
    assert values[:15] == base[:15]                     # handed out: never changed
    assert [v[1] for v in values] == [v[1] for v in base]  # group 1 untouched
    assert values[19][0]["lr"] == 0.0 and values[20][0]["lr"] == 0.0
    assert paramsched("jobs", "history", "decay") == 0
    out = capsys.readouterr().out.splitlines()
    assert "  decay  by anonymous  at iteration 15  (generation 1)" in out[0]
    assert out[1].startswith("    group 0: lr ") and out[-1] == "    reason: loss plateau"
    assert "PolyParamScheduler" in out[-2] and out[-2].startswith("    details: ")


def test_too_early_an_iteration_is_refused_with_the_earliest_allowed(
        stub: pb_grpc.SchedulerServiceStub, target: str, capsys: pytest.CaptureFixture[str]):
    new_job(stub, "early")
    assert paramsched("hold", "early", "lr", "--from", "3") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: OUT_OF_RANGE:") and "is 15" in err


def test_guardrails_refuse_a_big_jump_unless_forced_and_always_keep_bounds(
        stub: pb_grpc.SchedulerServiceStub, target: str, capsys: pytest.CaptureFixture[str]):
    new_job(stub, "guarded", max_jump_factor=2.0, bounds={"lr": (0.0, 0.5)})
    assert paramsched("set", "guarded", "lr", "0.001") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_ARGUMENT:") and "force" in err
    assert stub.GetJob(pb.GetJobRequest(job_id="guarded")).job.num_changes == 0

    assert paramsched("set", "guarded", "lr", "5", "--force") == 1
    assert capsys.readouterr().err.startswith("error: INVALID_ARGUMENT:")

    assert paramsched("set", "guarded", "lr", "0.001", "--force") == 0
    assert "applied" in capsys.readouterr().out
    assert stub.GetJob(pb.GetJobRequest(job_id="guarded")).job.num_changes == 1
    values = decode(stub.GetValues(pb.GetValuesRequest(job_id="guarded")).plan)
    assert {v[g]["lr"] for v in values[15:] for g in (0, 1)} == {0.001}


def test_extend_with_a_plot_after_applying(stub: pb_grpc.SchedulerServiceStub, target: str,
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    new_job(stub, "longer")
    plot = tmp_path / "extend.png"
    assert paramsched("extend", "longer", "--max-iters", "40", "--plot", str(plot)) == 0
    assert "training length: 40 iterations" in capsys.readouterr().out
    assert_png(plot)
    assert stub.GetJob(pb.GetJobRequest(job_id="longer")).job.max_iters == 40


def test_token_and_target_come_from_flags_or_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    tokens = {"tokens": [{"name": "ops", "token": "s3cret-admin-token-0001", "role": "admin"}]}
    secured = InProcessServer(data_dir=tmp_path, tokens_inline=json.dumps(tokens)).start()
    try:
        assert paramsched("jobs", "list", "--target", secured.target) == 1
        assert capsys.readouterr().err.startswith("error: UNAUTHENTICATED:")
        assert paramsched("jobs", "list", "--target", secured.target,
                          "--token", "s3cret-admin-token-0001") == 0
        monkeypatch.setenv("PARAMSCHED_TARGET", secured.target)
        monkeypatch.setenv("PARAMSCHED_TOKEN", "s3cret-admin-token-0001")
        assert paramsched("jobs", "list") == 0
        assert "no jobs" in capsys.readouterr().out
    finally:
        secured.stop()


def test_the_installed_executable_runs_the_commands(stub: pb_grpc.SchedulerServiceStub,
                                                    server: InProcessServer):
    new_job(stub, "exe")
    executable = Path(sys.executable).parent / "paramsched"
    result = subprocess.run([str(executable), "jobs", "show", "exe", "--target", server.target],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PARAMSCHED_TOKEN": ""})
    assert result.returncode == 0, result.stderr
    assert "job:          exe" in result.stdout
    missing = subprocess.run([str(executable), "jobs", "show", "nope", "--target",
                              server.target], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND:")


# -- the operator's experience -------------------------------------------------------
@pytest.mark.parametrize("argv", [["--version"], ["serve", "--version"],
                                  ["jobs", "list", "--version"], ["decay", "--version"],
                                  ["jobs", "--version"], ["health", "--version"],
                                  ["plot", "--version"]])
def test_version_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]):
    import paramsched as package

    with pytest.raises(SystemExit) as info:
        paramsched(*argv)
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"paramsched {package.__version__}"


def test_help_says_what_the_command_is_and_every_flag_has_help(
        capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        paramsched("--help")
    out = capsys.readouterr().out
    assert out.startswith("usage: paramsched") and "Server factory" not in out
    assert "``" not in out and "serve" in out and "PARAMSCHED_TARGET" in out
    import argparse

    from paramsched.server.app import make_parser as serve_parser

    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    silent = [f"{p.prog} {a.option_strings[0]}"
              for p in [*parsers(make_parser()), *parsers(serve_parser())]
              for a in p._actions if a.option_strings and not a.help]
    assert not silent, silent


def test_an_unreachable_server_says_how_to_start_or_find_one(capsys: pytest.CaptureFixture[str]):
    assert paramsched("jobs", "show", "j", "--target", "127.0.0.1:1") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: cannot reach the paramsched server at 127.0.0.1:1")
    hint = err.splitlines()[-1]
    assert hint.startswith("hint: ") and "paramsched serve" in hint
    assert "--target" in hint and "PARAMSCHED_TARGET" in hint


def test_connection_flags_may_come_before_the_command(server: InProcessServer,
                                                      capsys: pytest.CaptureFixture[str]):
    assert paramsched("--target", server.target, "jobs", "list") == 0
    assert paramsched(f"--target={server.target}", "--timeout", "5", "jobs", "list") == 0
    capsys.readouterr()
    # ... and still reach the command's own error handling
    assert paramsched("--target", "127.0.0.1:1", "jobs", "show", "j") == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: cannot reach the "
                                              "paramsched server at 127.0.0.1:1")


def test_jobs_show_counts_groups_in_good_grammar(stub: pb_grpc.SchedulerServiceStub,
                                                 target: str,
                                                 capsys: pytest.CaptureFixture[str]):
    spec = spec_proto(WARMUP_COSINE, [GROUPS[0]])
    stub.AttachJob(pb.AttachJobRequest(job_id="one-group", spec=spec, world_size=1))
    assert paramsched("jobs", "show", "one-group") == 0
    out = capsys.readouterr().out
    assert "(1 param group)" in out and "1 param groups" not in out
    new_job(stub, "two-groups")
    assert paramsched("jobs", "show", "two-groups") == 0
    assert "(2 param groups)" in capsys.readouterr().out


def test_a_change_on_a_finished_job_says_the_job_finished(stub: pb_grpc.SchedulerServiceStub,
                                                          target: str,
                                                          capsys: pytest.CaptureFixture[str]):
    new_job(stub, "finished", reported=0)
    for rank in (0, 1):
        stub.ReportProgress(pb.ReportProgressRequest(job_id="finished", generation=1,
                                                     rank=rank, iteration=20, plan_size=64))
    assert paramsched("set", "finished", "lr", "0.01") == 1
    err = capsys.readouterr().err
    assert "job 'finished' finished at iteration 20" in err and "from_iteration" not in err
    assert "Traceback" not in err


def test_a_dry_run_shows_the_values_at_the_start_and_the_end_of_the_change(
        stub: pb_grpc.SchedulerServiceStub, target: str, capsys: pytest.CaptureFixture[str]):
    new_job(stub, "dry-end")
    assert paramsched("decay", "dry-end", "lr", "--to", "0.0001", "--over", "4",
                      "--dry-run") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "at 19: before" in lines[2]
    before = engine_values(WARMUP_COSINE)
    row = next(line for line in lines if line.strip().startswith("lr"))
    at_s, at_end = before[15][0]["lr"], before[19][0]["lr"]
    assert re.search(rf"lr\s+{at_s:.6g}\s+->\s+{at_s:.6g}\s+{at_end:.6g}\s+->\s+0.0001\s+\*$",
                     row), row  # equal at s; the target at s + N
    assert captured.err == ""


def test_a_change_running_past_the_end_of_training_warns(stub: pb_grpc.SchedulerServiceStub,
                                                         target: str,
                                                         capsys: pytest.CaptureFixture[str]):
    new_job(stub, "past-end")
    assert paramsched("decay", "past-end", "lr", "--to", "1e-5", "--over", "2000",
                      "--dry-run") == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: the decay runs to iteration 2015 but the job ends at "
                          "iteration 20") and "never reaches its target" in err


def test_plots_take_a_log_y_axis_and_keep_labels_inside_the_frame(
        stub: pb_grpc.SchedulerServiceStub, target: str, tmp_path: Path):
    from paramsched.cli import plots

    new_job(stub, "log-y")
    out = tmp_path / "job.png"
    assert paramsched("plot", "--job", "log-y", "--out", str(out), "--log-y") == 0
    assert_png(out)
    curves = cli.simulate(build_job_spec(WARMUP_COSINE, GROUPS, epoch_length=5, max_epochs=4))
    fig = plots.draw(str(tmp_path / "marks.png"), [plots.Layer(curves, "x", "-", 1.0)],
                     title="t", epoch_length=5, marks=[(7, "now")], log_y=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes[:2]:
        if not ax.texts:
            continue
        assert ax.get_yscale() == "log"
        frame = ax.get_window_extent(renderer)
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert frame.y0 <= box.y0 and box.y1 <= frame.y1, (box, frame)


def test_serve_writes_its_address_and_prints_an_export_line_for_port_0(tmp_path: Path):
    import signal
    import time

    executable = Path(sys.executable).parent / "paramsched"
    address = tmp_path / "addr"
    proc = subprocess.Popen(
        [str(executable), "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
         "--address-file", str(address)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        deadline = time.monotonic() + 60
        while not address.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        target = address.read_text().strip()
        assert target.startswith("127.0.0.1:") and int(target.split(":")[1]) > 0
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == f"export PARAMSCHED_TARGET={target}"
        health = subprocess.run([str(executable), "health", "--target", target],
                                capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
