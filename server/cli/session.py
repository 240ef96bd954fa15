"""Connecting to the server: target, token, TLS."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from .common import CHANNEL_OPTIONS, UsageError


# -- talking to the server -----------------------------------------------------------
@dataclass
class Session:
    """A stub plus the per-call metadata and deadline every RPC of one command uses."""

    stub: pb_grpc.SchedulerServiceStub
    metadata: tuple[tuple[str, str], ...]
    timeout: float

    def call(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)


def _read_pem(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from the flags, or None for plaintext."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("mutual TLS needs both --tls-cert and --tls-key")
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(args.tls_ca, "CA bundle"),
        private_key=_read_pem(args.tls_key, "client key"),
        certificate_chain=_read_pem(args.tls_cert, "client certificate"))


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Session]:
    credentials = channel_credentials(args)
    if credentials is None:
        channel = grpc.insecure_channel(args.target, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(args.target, credentials, options=CHANNEL_OPTIONS)
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    try:
        yield Session(pb_grpc.SchedulerServiceStub(channel), metadata, args.timeout)
    finally:
        channel.close()
