"""Connecting to the server: a ``paramsched.Client`` from the connection flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from paramsched.client import Client

from .common import UsageError


def _read_pem(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None


def client_from_args(args: argparse.Namespace) -> Client:
    """The client every server-talking command uses: target, token, TLS, timeout.

    ``--timeout`` bounds each RPC and the retries of one command (a server that
    refuses the connection fails at once, with a hint).
    """
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("mutual TLS needs both --tls-cert and --tls-key")
    tls = bool(args.tls or args.tls_ca or args.tls_cert)
    return Client(
        args.target, timeout=args.timeout, wait_timeout=args.timeout, token=args.token or None,
        tls=tls, root_certificates=_read_pem(args.tls_ca, "CA bundle"),
        client_certificate=_read_pem(args.tls_cert, "client certificate"),
        client_key=_read_pem(args.tls_key, "client key"))
