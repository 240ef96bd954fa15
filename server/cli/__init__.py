"""The operator's ``paramsched`` commands: inspect jobs, change their schedules, plot curves.

Everything here talks to a running server over gRPC, exactly like any other client
(``jobs``, ``reschedule`` and its convenience forms, ``plot --job``), except ``plot
CONFIG``, which computes a config's curves locally with the same engine the server
runs, so a schedule can be looked at before any job exists.

Each convenience form is one ``RescheduleJob`` request whose audit label is the
form's name:

* ``set JOB P V``: replace mode, start value ``{P: V}``, no configs (held from then on);
* ``scale JOB P F``: multiply mode, start value ``{P: F}``: the curve keeps its shape;
* ``hold JOB P``: replace mode, no configs: the value in force is held;
* ``decay JOB P --to V --over N [--shape linear|cosine]``: replace mode with one
  Poly (power 1) or CosineAnnealing config reaching V at ``from + N``, then held;
* ``rewarm JOB P --from-factor F --over N``: multiply mode, a factor ramping
  linearly from F back to 1 over N iterations;
* ``extend JOB --max-iters N``: stretch mode (extends or shortens training).

Errors a server returns print as ``error: <CODE>: <details>`` (exit 1); bad input on
the command line or in a config file is a usage error (exit 2). No traceback either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import grpc

from .changes import build_request
from .common import CliError, UsageError
from .configs import load_config
from .curves import ProgressBar, simulate
from .parser import add_commands

__all__ = ["ProgressBar", "add_commands", "build_request", "load_config", "run", "simulate"]


def run(args: argparse.Namespace) -> int:
    """Run a client command; the exit status (errors printed, never raised)."""
    handler: Callable[[argparse.Namespace], int] = args.cli_handler
    try:
        return handler(args)
    except grpc.RpcError as exc:
        print(f"error: {_rpc_error(exc)}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"paramsched {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return f"{code.name if code is not None else 'UNKNOWN'}: {details}"
