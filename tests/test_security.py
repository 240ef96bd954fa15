"""Bearer tokens, TLS / mutual TLS, input limits, metrics and structured logs."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.server.auth import AuthConfigError, TokenRegistry

from grpc_harness import InProcessServer
from process_harness import ServerProcess
from test_service_grpc import PLATEAU, WARMUP_COSINE, spec_proto

ADMIN = "admin-secret-0123456789"
TEAM_A = "team-a-secret-0123456789"
TOKENS = {"tokens": [
    {"name": "platform", "token": ADMIN, "role": "admin"},
    {"name": "team-a", "token": TEAM_A, "jobs": ["shared-7"], "job_prefixes": ["team-a-"]},
]}


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[InProcessServer, pb_grpc.SchedulerServiceStub]]:
    server = InProcessServer(data_dir=tmp_path, tokens_inline=json.dumps(TOKENS),
                             metrics_port=0).start()
    channel = grpc.insecure_channel(server.target)
    yield server, pb_grpc.SchedulerServiceStub(channel)
    channel.close()
    server.stop()


# -- tokens ----------------------------------------------------------------------------
def test_missing_or_unknown_token_is_unauthenticated(secured: Any):
    _, stub = secured
    request = pb.GetJobRequest(job_id="team-a-1")
    assert status(lambda: stub.GetJob(request))[0] == grpc.StatusCode.UNAUTHENTICATED
    code, details = status(lambda: stub.GetJob(request, metadata=bearer("x" * 20)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "x" * 20 not in details


def test_job_scoped_token_works_inside_its_scope_only(secured: Any):
    _, stub = secured
    team = bearer(TEAM_A)
    created = stub.AttachJob(pb.AttachJobRequest(job_id="team-a-1", spec=spec_proto(PLATEAU)),
                             metadata=team)
    assert created.created
    stub.ReportProgress(pb.ReportProgressRequest(job_id="team-a-1", generation=1, iteration=2),
                        metadata=team)
    stub.AttachJob(pb.AttachJobRequest(job_id="shared-7", spec=spec_proto(PLATEAU)),
                   metadata=team)
    # Another team's job: refused the same way whether it exists or not.
    stub.AttachJob(pb.AttachJobRequest(job_id="team-b-1", spec=spec_proto(PLATEAU)),
                   metadata=bearer(ADMIN))
    existing = status(lambda: stub.GetJob(pb.GetJobRequest(job_id="team-b-1"), metadata=team))
    missing = status(lambda: stub.GetJob(pb.GetJobRequest(job_id="team-b-2"), metadata=team))
    assert existing[0] == missing[0] == grpc.StatusCode.PERMISSION_DENIED
    assert existing[1].replace("team-b-1", "X") == missing[1].replace("team-b-2", "X")
    # Deleting is for admins; listing shows only what the token may see.
    code, _ = status(lambda: stub.DeleteJob(pb.DeleteJobRequest(job_id="team-a-1"),
                                            metadata=team))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    listed = stub.ListJobs(pb.ListJobsRequest(page_size=1), metadata=team)
    names = [j.job_id for j in listed.jobs]
    while listed.next_page_token:
        listed = stub.ListJobs(pb.ListJobsRequest(page_size=1,
                                                  page_token=listed.next_page_token),
                               metadata=team)
        names += [j.job_id for j in listed.jobs]
    assert names == ["shared-7", "team-a-1"]
    assert len(stub.ListJobs(pb.ListJobsRequest(), metadata=bearer(ADMIN)).jobs) == 3
    assert stub.DeleteJob(pb.DeleteJobRequest(job_id="team-a-1"), metadata=bearer(ADMIN)).deleted


def test_health_needs_no_token(secured: Any):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    server, _ = secured
    with grpc.insecure_channel(server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tokens_are_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    server = InProcessServer(data_dir=tmp_path, tokens_inline=json.dumps(TOKENS)).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            stub.AttachJob(pb.AttachJobRequest(job_id="team-a-x", spec=spec_proto(PLATEAU)),
                           metadata=bearer(TEAM_A))
            with pytest.raises(grpc.RpcError):
                stub.GetJob(pb.GetJobRequest(job_id="other"), metadata=bearer(TEAM_A))
    finally:
        server.stop()
    text = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "job created" in text and "team-a" in text  # the principal's name is logged
    assert TEAM_A not in text and ADMIN not in text


@pytest.mark.parametrize(("document", "where"), [
    ({"tokens": [{"name": "a", "token": "short"}]}, "tokens[0].token"),
    ({"tokens": [{"name": "a", "token": "x" * 20}]}, "tokens[0]: a job-scoped token"),
    ({"tokens": [{"name": "a", "token": "x" * 20, "role": "root"}]}, "tokens[0].role"),
    ({"tokens": [{"name": "a", "token": "x" * 20, "role": "admin"},
                 {"name": "a", "token": "y" * 20, "role": "admin"}]}, "tokens[1].name"),
    ({"tokenz": []}, "expected"),
])
def test_bad_token_documents_are_refused(document: Any, where: str):
    with pytest.raises(AuthConfigError) as info:
        TokenRegistry.from_document(document, "tokens.json")
    assert where in str(info.value)


# -- TLS -------------------------------------------------------------------------------
def _cert(subject: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paramsched test CA")])
    ca = _cert("paramsched test CA", ca_key, ca_name, ca_key, ca=True)
    files: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        files[name] = out / name
        files[name].write_bytes(data)

    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, key, ca_name, ca_key, ca=False)
        write(f"{who}.pem", cert.public_bytes(serialization.Encoding.PEM))
        write(f"{who}.key", key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return files


def _try(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    with channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        try:
            stub.ListJobs(pb.ListJobsRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_tls(tmp_path: Path, pki: dict[str, Path]):
    server = InProcessServer(data_dir=tmp_path, tls_cert=str(pki["server.pem"]),
                             tls_key=str(pki["server.key"])).start()
    try:
        root = pki["ca.pem"].read_bytes()
        assert _try(server.target, grpc.ssl_channel_credentials(root)) == grpc.StatusCode.OK
        assert _try(server.target, None) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, pki: dict[str, Path]):
    server = InProcessServer(data_dir=tmp_path, tls_cert=str(pki["server.pem"]),
                             tls_key=str(pki["server.key"]),
                             tls_client_ca=str(pki["ca.pem"])).start()
    try:
        root = pki["ca.pem"].read_bytes()
        without = grpc.ssl_channel_credentials(root)
        with_cert = grpc.ssl_channel_credentials(root, pki["client.key"].read_bytes(),
                                                 pki["client.pem"].read_bytes())
        assert _try(server.target, without) == grpc.StatusCode.UNAVAILABLE
        assert _try(server.target, with_cert) == grpc.StatusCode.OK
    finally:
        server.stop()


# -- input limits ------------------------------------------------------------------------
@pytest.mark.parametrize(("cfg", "groups", "limit"), [
    ([dict(type="ConstantLR")] * 65, [{"lr": 0.1}], "max_schedulers"),
    ([dict(type="MultiStepLR", milestones=list(range(10_001)))], [{"lr": 0.1}],
     "max_list_items"),
    ([dict(type="ConstantLR")], [{"lr": 0.1}] * 257, "max_param_groups"),
    ([dict(type="ConstantLR")], [{f"k{i}": 0.1 for i in range(65)} | {"lr": 0.1}],
     "max_params_per_group"),
])
def test_spec_limits(tmp_path: Path, cfg: Any, groups: Any, limit: str):
    server = InProcessServer(data_dir=tmp_path).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            code, details = status(lambda: stub.AttachJob(pb.AttachJobRequest(
                job_id="j", spec=spec_proto(cfg, groups))))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and limit in details
            assert not stub.ListJobs(pb.ListJobsRequest()).jobs
    finally:
        server.stop()


def test_message_and_metric_limits(tmp_path: Path):
    server = InProcessServer(data_dir=tmp_path, max_message_bytes=64 * 1024).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            huge = pb.AttachJobRequest(job_id="j", spec=spec_proto(WARMUP_COSINE))
            huge.spec.param_scheduler_json += " " * 70_000
            code, details = status(lambda: stub.AttachJob(huge))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_message_bytes" in details
            stub.AttachJob(pb.AttachJobRequest(job_id="j", spec=spec_proto(PLATEAU)))
            report = pb.ReportProgressRequest(job_id="j", generation=1, iteration=5,
                                              epoch_end=0, has_metrics=True)
            report.metrics.update({f"m{i}": 1.0 for i in range(65)} | {"loss": 1.0})
            code, details = status(lambda: stub.ReportProgress(report))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_metrics" in details
            long_name = pb.ReportProgressRequest(job_id="j", generation=1, iteration=5,
                                                 epoch_end=0, has_metrics=True)
            long_name.metrics.update({"x" * 129: 1.0, "loss": 1.0})
            code, details = status(lambda: stub.ReportProgress(long_name))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_metric_name" in details
    finally:
        server.stop()


def test_serving_beyond_loopback_without_auth_warns(tmp_path: Path):
    server = ServerProcess(data_dir=tmp_path, args=["--host", "0.0.0.0"]).start()
    try:
        assert any("WITHOUT authentication" in line for line in server.log)
    finally:
        server.stop()
    quiet = ServerProcess(data_dir=tmp_path).start()
    try:
        assert not any("WITHOUT authentication" in line for line in quiet.log)
    finally:
        quiet.stop()


# -- metrics and logs ---------------------------------------------------------------------
def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def test_prometheus_metrics(secured: Any):
    server, stub = secured
    admin = bearer(ADMIN)
    stub.AttachJob(pb.AttachJobRequest(job_id="m", spec=spec_proto(PLATEAU)), metadata=admin)
    stub.ReportProgress(pb.ReportProgressRequest(job_id="m", generation=1, iteration=1),
                        metadata=admin)
    state = stub.GetState(pb.GetStateRequest(job_id="m", iteration=1), metadata=admin)
    stub.LoadState(pb.LoadStateRequest(job_id="m", state_json=state.state_json), metadata=admin)
    with pytest.raises(grpc.RpcError):
        stub.ReportProgress(pb.ReportProgressRequest(job_id="m", generation=1, iteration=2),
                            metadata=admin)
    with pytest.raises(grpc.RpcError):
        stub.GetJob(pb.GetJobRequest(job_id="m"))
    # A refused call is counted as its handler unwinds, which may be a moment after the
    # client saw the status: scrape until it shows (or fail below).
    deadline = time.monotonic() + 10
    while True:
        text = _scrape(server.parts.metrics_http.server_port)
        try:
            _sample(text, "paramsched_rpcs_total", method="GetJob", code="UNAUTHENTICATED")
            break
        except AssertionError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert _sample(text, "paramsched_rpcs_total", method="AttachJob", code="OK") == 1
    assert _sample(text, "paramsched_rpcs_total", method="ReportProgress",
                   code="FAILED_PRECONDITION") == 1
    assert _sample(text, "paramsched_rpcs_total", method="GetJob", code="UNAUTHENTICATED") == 1
    assert _sample(text, "paramsched_rpc_duration_seconds_count", method="ReportProgress") == 2
    assert _sample(text, "paramsched_store_duration_seconds_count", operation="report") >= 1
    assert _sample(text, "paramsched_plan_refills_total") == 3  # attach, report, load
    assert _sample(text, "paramsched_fenced_reports_total") == 1
    assert _sample(text, "paramsched_active_jobs") == 1


def test_json_logs_carry_job_rank_generation(tmp_path: Path):
    server = ServerProcess(data_dir=tmp_path, args=["--log-format", "json"]).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            for _ in range(2):
                stub.AttachJob(pb.AttachJobRequest(job_id="j", rank=3, spec=spec_proto(PLATEAU)))
            state = stub.GetState(pb.GetStateRequest(job_id="j", iteration=0)).state_json
            for _ in range(2):
                stub.LoadState(pb.LoadStateRequest(job_id="j", state_json=state))
            stub.DeleteJob(pb.DeleteJobRequest(job_id="j"))
        assert server.terminate() == 0
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log if line.strip()]
    events = [line for line in lines if "event" in line]
    assert [(e["event"], e["job_id"], e["generation"]) for e in events] == [
        ("created", "j", 1), ("resumed", "j", 2), ("deleted", "j", 0)]
    assert events[0]["rank"] == 3
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
