"""A real server with the web dashboard (``http_port=0``) in this process, and the few
helpers the dashboard's tests share: jobs made over gRPC as training ranks make them,
and JSON requests as the browser sends them (bearer token in a header)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc
from paramsched.server.grpc.servicer import spec_to_proto

from grpc_harness import InProcessServer

ADMIN = "admin-token-0123456789abcdef"
TEAM_A = "team-a-token-0123456789abcdef"
TOKENS = json.dumps({"tokens": [
    {"name": "platform", "token": ADMIN, "role": "admin"},
    {"name": "team-a", "token": TEAM_A, "job_prefixes": ["team-a-"]},
]})
COSINE = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=20),
          dict(type="CosineAnnealingLR", T_max=10, by_epoch=True, convert_to_iter_based=True)]
GROUPS = [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
          {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.0}]


class Dashboard:
    """A started server: ``url`` (the dashboard), ``stub`` (gRPC, admin token if any)."""

    def __init__(self, server: InProcessServer, token: str | None, context: Any = None) -> None:
        self.server = server
        assert server.parts is not None and server.parts.web is not None
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{server.parts.web.port}"
        self.token = token
        self.context = context
        self.channel = grpc.insecure_channel(server.target) if context is None else None
        self.stub = pb_grpc.SchedulerServiceStub(self.channel) if self.channel else None

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def make_job(self, job_id: str, *, cfg: Any = COSINE, groups: Any = GROUPS,
                 epoch_length: int = 10, max_epochs: int | None = 10,
                 max_iters: int | None = None, world_size: int = 2,
                 progress: dict[int, int] | None = None, run_id: str = "run-1",
                 **spec_extra: Any) -> pb.Job:
        """Create ``job_id`` with ``world_size`` ranks of one run, then each rank reports
        its ``progress`` (iterations done), as training would."""
        assert self.stub is not None
        data = {"param_scheduler": cfg, "initial_values": groups, "epoch_length": epoch_length,
                "max_epochs": max_epochs, "max_iters": max_iters, **spec_extra}
        job = None
        for rank in range(world_size):
            reply = self.stub.AttachJob(pb.AttachJobRequest(
                job_id=job_id, spec=spec_to_proto(data), world_size=world_size, rank=rank,
                run_id=run_id), metadata=self.metadata)
            job = reply.job
        assert job is not None
        for rank, done in (progress or {}).items():
            self.report(job_id, rank, done, job.generation)
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self.metadata).job

    def report(self, job_id: str, rank: int, iteration: int, generation: int,
               **fields: Any) -> pb.Plan:
        assert self.stub is not None
        return self.stub.ReportProgress(pb.ReportProgressRequest(
            job_id=job_id, rank=rank, iteration=iteration, generation=generation, **fields),
            metadata=self.metadata).plan

    def get_values(self, job_id: str, start: int = 0, stop: int = 0) -> pb.Plan:
        assert self.stub is not None
        return self.stub.GetValues(pb.GetValuesRequest(
            job_id=job_id, start_iteration=start, stop_iteration=stop),
            metadata=self.metadata).plan

    def request(self, path: str, body: Any = None, *, token: str | None = "default",
                headers: dict[str, str] | None = None,
                raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON or text) of one request to the dashboard."""
        send = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            send["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            send.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.url + path, data=data, headers=send,
                                         method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as answer:
                status, got, text = answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as exc:
            status, got, text = exc.code, dict(exc.headers), exc.read()
        kind = got.get("Content-Type", "")
        return status, got, (json.loads(text) if kind.startswith("application/json")
                             else text.decode())

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.server.stop()


@contextmanager
def dashboard(tmp_path: Path, *, tokens: bool = True, plan_size: int = 16,
              **config: Any) -> Iterator[Dashboard]:
    if tokens:
        config["tokens_inline"] = TOKENS
    ca_file = config.pop("ca_file", None)
    server = InProcessServer(data_dir=tmp_path / "data", plan_size=plan_size, http_port=0,
                             **config).start()
    context = ssl.create_default_context(cafile=ca_file) if config.get("tls_cert") else None
    ui = Dashboard(server, ADMIN if tokens else None, context)
    try:
        yield ui
    finally:
        ui.close()


def _cert(subject: str, key: Any, issuer: x509.Name, issuer_key: Any, *,
          ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: ca.pem, server.pem/.key."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paramsched web test CA")])
    ca = _cert("paramsched web test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("server", key, ca_name, ca_key, ca=False)
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files
