"""The dashboard's JSON API (docs/WEB.md): the same service, tokens and TLS as gRPC;
domain errors as HTTP statuses; strict headers; hostile strings stay data."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.server.app import make_parser
from paramsched.server.errors import InvalidArgument
from paramsched.server.web import STATUS, parse_change
from paramsched.server.web.views import finite

from web_harness import ADMIN, TEAM_A, Dashboard, dashboard, make_pki

STATIC = Path(__file__).resolve().parents[1] / "server" / "web" / "static"
ROP = [dict(type="ReduceOnPlateauLR", monitor="loss", patience=0, factor=0.5, by_epoch=True)]


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    with dashboard(tmp_path_factory.mktemp("web-api")) as d:
        d.make_job("team-a-1", progress={0: 35, 1: 30})
        d.make_job("team-a-2", progress={0: 100, 1: 100})
        d.make_job("job-b", progress={0: 5}, bounds={"lr": [0.0, 0.5]}, max_jump_factor=3.0)
        d.make_job("job-rop", cfg=ROP, progress={0: 10, 1: 10})
        yield d


def values_of(plan: pb.Plan) -> dict[str, list[list[float]]]:
    params, width = list(plan.params), plan.num_groups * len(plan.params)
    return {p: [[plan.values[i * width + g * len(params) + k] for i in range(plan.num_iterations)]
                for g in range(plan.num_groups)] for k, p in enumerate(params)}


# -- pages and headers -------------------------------------------------------------------
def test_pages_have_a_strict_csp_and_no_inline_code(ui: Dashboard):
    status, headers, page = ui.request("/", token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="/static/' in attrs and not body.strip()
                           for attrs, body in scripts)
    assert not re.search(r"\son\w+=|\sstyle=|<style", page)
    assert not re.search(r"https?://", page)  # nothing from a third party
    for name in ("app.js", "chart.js", "style.css", "favicon.svg"):
        status, headers, _ = ui.request(f"/static/{name}", token=None)
        assert status == 200 and "Content-Security-Policy" in headers
    assert ui.request("/static/../server.py", token=None)[0] == 404
    assert ui.request("/static/nope.js", token=None)[0] == 404


def test_the_scripts_never_parse_strings_as_html():
    for name in ("app.js", "chart.js"):
        code = (STATIC / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function", "localStorage", "EventSource"):
            assert sink not in code, f"{name} uses {sink}"
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", code), name


# -- auth ----------------------------------------------------------------------------------
def test_every_api_answer_needs_a_token_and_never_from_the_url(ui: Dashboard):
    for path in ("/api/v1/session", "/api/v1/jobs", "/api/v1/jobs/team-a-1",
                 f"/api/v1/jobs?token={ADMIN}", f"/api/v1/jobs?access_token={ADMIN}"):
        status, headers, body = ui.request(path, token=None)
        assert status == 401 and body["error"]["code"] == "unauthenticated", path
        assert headers["Cache-Control"] == "no-store"
    status, _, body = ui.request("/api/v1/jobs", token="not-a-known-token-at-all")
    assert status == 401 and body["error"]["message"] == "unknown bearer token"
    assert ui.request("/api/v1/session")[2] == {"auth": True, "principal": "platform",
                                                "admin": True, "tls": False}


def test_a_scoped_token_lists_and_reads_only_its_jobs(ui: Dashboard):
    status, _, body = ui.request("/api/v1/jobs", token=TEAM_A)
    assert status == 200 and [j["job_id"] for j in body["jobs"]] == ["team-a-1", "team-a-2"]
    assert ui.request("/api/v1/session", token=TEAM_A)[2]["admin"] is False
    for job_id in ("job-b", "no-such-job"):  # the same answer whether it exists or not
        for tail in ("", "/values", "/history"):
            status, _, body = ui.request(f"/api/v1/jobs/{job_id}{tail}", token=TEAM_A)
            assert status == 403 and body["error"]["code"] == "permission_denied"
    assert ui.request("/api/v1/jobs/team-a-1/history", token=TEAM_A)[0] == 200
    # changes are for admins, even dry runs of its own jobs
    status, _, body = ui.request("/api/v1/jobs/team-a-1/changes",
                                 {"kind": "set", "param": "lr", "value": 0.01}, token=TEAM_A)
    assert status == 403 and "not an admin token" in body["error"]["message"]


def test_foreign_origins_and_form_posts_are_refused(ui: Dashboard):
    status, _, body = ui.request("/api/v1/jobs", headers={"Origin": "https://evil.example"})
    assert status == 403 and "origin" in body["error"]["message"]
    assert ui.request("/api/v1/jobs", headers={"Origin": ui.url})[0] == 200
    status, _, body = ui.request(
        "/api/v1/jobs/job-b/changes", raw=b'{"kind": "hold", "param": "lr"}',
        headers={"Content-Type": "text/plain"})
    assert status == 400 and body["error"]["field"] == "Content-Type"


# -- jobs and curves -----------------------------------------------------------------------
def test_the_list_shows_state_progress_values_and_pages(ui: Dashboard):
    jobs = {j["job_id"]: j for j in ui.request("/api/v1/jobs")[2]["jobs"]}
    one = jobs["team-a-1"]
    assert one["state"] == "running" and one["generation"] == 1 and one["world_size"] == 2
    assert one["progress"] == {"min": 30, "max": 35, "spread": 5, "reported": 2}
    assert one["ranks"] == [{"rank": 0, "iteration": 35}, {"rank": 1, "iteration": 30}]
    at35 = values_of(ui.get_values("team-a-1", 35, 36))
    assert one["current"]["values"] == [{"lr": at35["lr"][0][0]}, {"lr": at35["lr"][1][0]}]
    assert jobs["team-a-2"]["state"] == "finished"
    assert jobs["job-rop"]["state"] == "waiting"  # epoch 0 ended: its decision is missing
    assert jobs["job-rop"]["current"]["waits_for_epoch"] == 0
    first = ui.request("/api/v1/jobs?page_size=3")[2]
    assert len(first["jobs"]) == 3 and first["next_page_token"]
    rest = ui.request(f"/api/v1/jobs?page_size=3&page_token={first['next_page_token']}")[2]
    assert [j["job_id"] for j in first["jobs"] + rest["jobs"]] == sorted(jobs)
    assert [j["job_id"] for j in ui.request("/api/v1/jobs?prefix=team-a-")[2]["jobs"]] == [
        "team-a-1", "team-a-2"]


def test_values_equal_get_values_exactly_and_samples_are_its_values(ui: Dashboard):
    plan = ui.get_values("team-a-1")
    data = ui.request("/api/v1/jobs/team-a-1/values")[2]
    assert data["step"] == 1 and data["iterations"] == list(range(plan.num_iterations))
    assert data["values"] == values_of(plan) and data["max_iters"] == 100
    sampled = ui.request("/api/v1/jobs/team-a-1/values?points=10")[2]
    assert sampled["step"] == 11 and sampled["iterations"][-1] == 100
    full = values_of(plan)["lr"]
    assert sampled["values"]["lr"][1] == [full[1][i] for i in sampled["iterations"]]
    window = ui.request("/api/v1/jobs/team-a-1/values?start=40&stop=45")[2]
    assert window["iterations"] == [40, 41, 42, 43, 44]
    waiting = ui.request("/api/v1/jobs/job-rop/values")[2]
    assert waiting["waits_for_epoch"] == 0 and waiting["iterations"][-1] == 9


@pytest.mark.parametrize(("path", "status", "field"), [
    ("/api/v1/jobs/no-such-job", 404, None),
    ("/api/v1/jobs/bad%21id", 400, "job_id"),
    ("/api/v1/jobs/team-a-1/values?start=x", 400, "start"),
    ("/api/v1/jobs/team-a-1/values?start=50&stop=40", 400, "stop"),
    ("/api/v1/jobs/team-a-1/values?points=1", 400, "points"),
    ("/api/v1/jobs?page_size=0", 400, "page_size"),
    ("/api/v1/nothing-here", 404, None),
])
def test_errors_are_json_with_the_status_and_field(ui: Dashboard, path: str, status: int,
                                                   field: str | None):
    got, headers, body = ui.request(path)
    assert got == status and headers["Content-Type"].startswith("application/json")
    assert body["error"]["message"]
    if field:
        assert body["error"]["field"] == field


def test_domain_errors_map_to_one_status_each():
    assert STATUS["invalid_argument"] == 400 and STATUS["permission_denied"] == 403
    assert STATUS["not_found"] == 404 and STATUS["unavailable"] == 503
    assert STATUS["aborted"] == 409 and STATUS["failed_precondition"] == 412


# -- changes -------------------------------------------------------------------------------
def test_a_dry_run_changes_nothing_and_shows_before_and_after(ui: Dashboard):
    before = ui.request("/api/v1/jobs/job-b")[2]
    answer = ui.request("/api/v1/jobs/job-b/changes",
                        {"kind": "scale", "param": "lr", "factor": 0.5})[2]
    assert answer["applied"] is False and answer["from_iteration"] == before["issued_until"]
    s = answer["from_iteration"]
    assert answer["before"]["iterations"][0] == answer["after"]["iterations"][0] == s
    assert answer["before"]["iterations"][-1] == 100
    for old, new in zip(answer["before"]["values"]["lr"][0], answer["after"]["values"]["lr"][0],
                        strict=True):
        assert new == old * 0.5
    after = ui.request("/api/v1/jobs/job-b")[2]
    assert after["num_changes"] == 0 and after["generation"] == before["generation"]


def test_guardrails_refuse_with_their_message(ui: Dashboard):
    status, _, body = ui.request("/api/v1/jobs/job-b/changes",
                                 {"kind": "set", "param": "lr", "value": 5.0})
    assert status == 400 and body["error"]["field"] == "bounds.lr"
    assert "outside the job's bounds" in body["error"]["message"]
    status, _, body = ui.request("/api/v1/jobs/job-b/changes",
                                 {"kind": "scale", "param": "lr", "factor": 0.1})
    assert status == 400 and body["error"]["field"] == "force"
    forced = ui.request("/api/v1/jobs/job-b/changes",
                        {"kind": "scale", "param": "lr", "factor": 0.1, "force": True})
    assert forced[0] == 200


def test_an_applied_change_is_in_the_audit_trail_with_its_reason_verbatim(ui: Dashboard):
    reason = '<script>alert("x")</script> & </td><img src=x onerror=alert(1)> "quoted"'
    status, headers, answer = ui.request("/api/v1/jobs/team-a-1/changes", {
        "kind": "decay", "param": "lr", "to": 1e-4, "over": 20, "shape": "linear",
        "reason": reason, "dry_run": False})
    assert status == 200 and answer["applied"] is True
    assert headers["Content-Type"].startswith("application/json")
    assert answer["job"]["num_changes"] == 1 and answer["entry"]["reason"] == reason
    trail = ui.request("/api/v1/jobs/team-a-1/history")[2]["entries"]
    assert trail[-1]["action"] == "decay" and trail[-1]["reason"] == reason
    assert trail[-1]["principal"] == "platform"
    assert trail[-1]["iteration"] == answer["from_iteration"]
    grpc_trail = ui.stub.GetJobHistory(pb.GetJobHistoryRequest(job_id="team-a-1"),
                                       metadata=ui.metadata).entries
    assert grpc_trail[-1].reason == reason and grpc_trail[-1].action == "decay"
    job = ui.request("/api/v1/jobs/team-a-1")[2]
    assert job["last_change"]["from_iteration"] == answer["from_iteration"]
    assert job["changes"][0]["mode"] == "replace"
    plan = values_of(ui.get_values("team-a-1"))
    assert ui.request("/api/v1/jobs/team-a-1/values")[2]["values"] == plan
    assert math.isclose(plan["lr"][0][-1], 1e-4)


def test_fenced_reports_show_as_the_fenced_state(ui: Dashboard):
    ui.make_job("job-fenced", progress={0: 3})
    with pytest.raises(Exception, match="generation"):
        ui.report("job-fenced", 0, 4, generation=7)
    job = ui.request("/api/v1/jobs/job-fenced")[2]
    assert job["state"] == "fenced" and job["fenced"]["count"] == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "explode"}, "kind"),
    ({"kind": "set", "param": "lr"}, "value"),
    ({"kind": "set", "param": "lr", "value": float("nan")}, "value"),
    ({"kind": "set", "param": "", "value": 1}, "param"),
    ({"kind": "scale", "param": "lr", "factor": -1}, "factor"),
    ({"kind": "decay", "param": "lr", "to": 0, "over": 0}, "over"),
    ({"kind": "decay", "param": "lr", "to": 0, "over": 5, "shape": "zigzag"}, "shape"),
    ({"kind": "rewarm", "param": "lr", "over": 5}, "from_factor"),
    ({"kind": "extend"}, "max_iters"),
    ({"kind": "hold", "param": "lr", "groups": ["0"]}, "groups"),
    ({"kind": "hold", "param": "lr", "dry_run": "no"}, "dry_run"),
    ({"kind": "hold", "param": "lr", "from_iteration": -1}, "from_iteration"),
    ({"kind": "reschedule", "mode": "sideways"}, "mode"),
    ([1, 2], "body"),
])
def test_change_forms_name_the_bad_field(body: object, field: str):
    with pytest.raises(InvalidArgument) as caught:
        parse_change(body)
    assert caught.value.field == field


def test_change_forms_build_the_cli_changes():
    decay = parse_change({"kind": "decay", "param": "lr", "to": 1e-5, "over": 100})
    assert decay.dry_run is True and decay.change["mode"] == "replace"
    assert decay.change["param_scheduler"] == [{
        "type": "CosineAnnealingParamScheduler", "param_name": "lr", "T_max": 100,
        "eta_min": 1e-5, "by_epoch": False, "end": 101}]
    rewarm = parse_change({"kind": "rewarm", "param": "lr", "from_factor": 0.1, "over": 50,
                           "groups": [1], "from_iteration": 7, "dry_run": False})
    assert rewarm.change["mode"] == "multiply" and rewarm.change["groups"] == [1]
    assert rewarm.change["from_iteration"] == 7 and rewarm.dry_run is False
    assert parse_change({"kind": "extend", "max_iters": 900}).change["mode"] == "stretch"
    assert parse_change({"kind": "hold", "param": "lr"}).change["start_values"] == {}


def test_json_never_carries_nan_or_infinity():
    assert finite({"a": [float("nan"), float("inf"), -float("inf"), 1.5]}) == {
        "a": ["NaN", "Infinity", "-Infinity", 1.5]}
    json.dumps(finite([float("nan")]), allow_nan=False)


# -- configuration ---------------------------------------------------------------------------
def test_the_http_port_flag_and_its_variable(monkeypatch: pytest.MonkeyPatch):
    assert make_parser().parse_args(["serve"]).http_port == -1  # off
    assert make_parser().parse_args(["serve", "--http-port", "8080"]).http_port == 8080
    monkeypatch.setenv("PARAMSCHED_HTTP_PORT", "8081")
    assert make_parser().parse_args(["serve"]).http_port == 8081


def test_without_tokens_only_loopback_hosts_are_served(tmp_path: Path):
    with dashboard(tmp_path, tokens=False) as ui:
        ui.make_job("job-1")
        assert ui.request("/api/v1/session")[2]["auth"] is False
        assert ui.request("/api/v1/jobs")[0] == 200
        status, _, body = ui.request("/api/v1/jobs", headers={"Host": "attacker.example"})
        assert status == 403 and "host" in body["error"]["message"]


def test_tls_when_the_server_has_it(tmp_path: Path):
    pki = make_pki(tmp_path)
    with dashboard(tmp_path, tls_cert=str(pki["cert"]), tls_key=str(pki["key"]),
                   ca_file=str(pki["ca"])) as ui:
        assert ui.url.startswith("https://")
        status, headers, body = ui.request("/api/v1/session")
        assert status == 200 and body["tls"] is True
        assert "Strict-Transport-Security" in headers
        plain = urllib.request.Request(ui.url.replace("https://", "http://") + "/")
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            urllib.request.urlopen(plain, timeout=5).read()


def test_paramsched_serve_with_http_port_serves_the_dashboard_until_sigterm(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        http_port = sock.getsockname()[1]
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PARAMSCHED_HTTP_PORT": str(http_port)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from paramsched.server.app import main; "
             "sys.exit(main(sys.argv[1:]))", "serve", "--port", "0",
             "--data-dir", str(tmp_path / "data")], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while f"dashboard on http://127.0.0.1:{http_port}/" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        url = f"http://127.0.0.1:{http_port}"
        with urllib.request.urlopen(url + "/", timeout=10) as page:
            assert "paramsched" in page.read().decode()
        with urllib.request.urlopen(url + "/api/v1/jobs", timeout=10) as answer:
            assert json.loads(answer.read()) == {"jobs": [], "next_page_token": ""}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
