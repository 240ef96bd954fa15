"""The client's side of security and replicas: tokens, TLS, mutual TLS, round robin."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import torch

from paramsched import Client
from paramsched.client.errors import ParamschedError

from grpc_harness import InProcessServer
from process_harness import ServerProcess
from test_security import TEAM_A, TOKENS, pki  # noqa: F401  (pki is a fixture)

CONFIG = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, end=5),
          dict(type="CosineAnnealingLR", T_max=3, by_epoch=True, convert_to_iter_based=True)]


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)


def train(client: Client, job_id: str, steps: int = 12) -> list[float]:
    opt = optimizer()
    lrs = []
    with client.attach(opt, job_id, CONFIG, epoch_length=4, max_epochs=3) as handle:
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
        assert handle.iteration == steps
    return lrs


def test_bearer_token_from_the_client(tmp_path: Path):
    server = InProcessServer(data_dir=tmp_path, tokens_inline=json.dumps(TOKENS)).start()
    try:
        with Client(server.target, token=TEAM_A, wait_timeout=10) as client:
            assert len(train(client, "team-a-1")) == 12
            with pytest.raises(ParamschedError) as info:
                client.attach(optimizer(), "team-b-1", CONFIG, epoch_length=4, max_epochs=3)
            assert "PERMISSION_DENIED" in repr(info.value) or "may not access" in str(info.value)
        with Client(server.target, wait_timeout=5) as anonymous:
            with pytest.raises(ParamschedError) as info:
                anonymous.attach(optimizer(), "team-a-1")
            assert "bearer token" in str(info.value)
            assert TEAM_A not in str(info.value)
    finally:
        server.stop()


def test_tls_and_mutual_tls_from_the_client(tmp_path: Path, pki: dict[str, Path]):  # noqa: F811
    server = InProcessServer(data_dir=tmp_path, tls_cert=str(pki["server.pem"]),
                             tls_key=str(pki["server.key"]),
                             tls_client_ca=str(pki["ca.pem"])).start()
    try:
        with Client(server.target, root_certificates=pki["ca.pem"],
                    client_certificate=pki["client.pem"], client_key=pki["client.key"],
                    wait_timeout=10) as client:
            assert len(train(client, "tls-job")) == 12
        with Client(server.target, root_certificates=pki["ca.pem"], wait_timeout=2) as no_cert:
            with pytest.raises(ParamschedError) as info:
                no_cert.attach(optimizer(), "tls-job")
            assert server.target in str(info.value)  # the error names the server
    finally:
        server.stop()
    with pytest.raises(ValueError, match="both client_certificate and client_key"):
        Client("127.0.0.1:1", root_certificates=pki["ca.pem"], client_key=pki["client.key"])


def _rpc_count(server: ServerProcess) -> float:
    match = next(m for line in server.log
                 if (m := re.search(r"metrics on (http://\S+/metrics)", line)))
    with urllib.request.urlopen(match.group(1).replace("0.0.0.0", "127.0.0.1"),
                                timeout=10) as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("paramsched_rpcs_total{"))


def test_round_robin_over_two_replicas(redis_url: str):
    servers = [ServerProcess(redis_url=redis_url, args=["--metrics-port", "0"]).start()
               for _ in range(2)]
    try:
        # Two addresses, as a headless Service's DNS name would resolve to.
        target = "ipv4:" + ",".join(s.target for s in servers)
        with Client(target, load_balancing="round_robin", plan_size=1, max_plan_size=1,
                    prefetch_seconds=0.0, wait_timeout=20) as client:
            lrs = train(client, "lb-job", steps=12)
        assert len(lrs) == 12
        counts = [_rpc_count(s) for s in servers]
        assert all(c >= 2 for c in counts), counts
    finally:
        for server in servers:
            server.stop()
