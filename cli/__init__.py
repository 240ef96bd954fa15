"""The ``paramsched`` command: run a server, inspect jobs, change schedules, plot curves.

``paramsched serve`` is the server's own (``paramsched.server.app``, imported only for
it). Every other command is a thin layer on the client's admin API
(``paramsched.Client``: ``list_jobs``, ``get_job``, ``history``, ``delete_job``,
``reschedule``, ``set``, ``scale``, ``hold``, ``decay``, ``rewarm``, ``extend``) and
talks to a server over gRPC like any other client, except ``plot CONFIG``, which
computes a config's curves locally with the same engine the server runs, so a
schedule can be looked at before any job exists.

Errors a server returns print as ``error: <CODE>: <details>`` (exit 1), with a hint
where there is something to do about them; bad input on the command line or in a
config file is a usage error (exit 2). No traceback either way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from paramsched.client import ParamschedError

from .changes import build_change, build_request
from .common import CliError, UsageError
from .configs import load_config
from .curves import ProgressBar, simulate
from .parser import add_commands, make_parser

__all__ = ["ProgressBar", "add_commands", "build_change", "build_request", "load_config",
           "main", "make_parser", "run", "simulate"]


def main(argv: list[str] | None = None) -> int:
    """The ``paramsched`` console script."""
    argv = hoist_connection_flags(list(sys.argv[1:] if argv is None else argv))
    if argv[:1] == ["serve"]:
        from paramsched.server.app import main as serve_main

        return serve_main(argv)
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


#: connection flags (with a value) that may also come before the command.
_CONNECTION_FLAGS = ("--target", "--token", "--timeout", "--tls-ca", "--tls-cert", "--tls-key")


def hoist_connection_flags(argv: list[str]) -> list[str]:
    """``paramsched --target HOST:PORT jobs list`` as ``paramsched jobs list --target
    HOST:PORT``: the connection flags are the commands' own, and argparse would read a
    leading ``--target``'s value as the command name ("invalid choice: 'HOST:PORT'")."""
    moved: list[str] = []
    i = 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name == "--tls" or (name in _CONNECTION_FLAGS and "=" in argv[i]):
            moved.append(argv[i])
            i += 1
        elif name in _CONNECTION_FLAGS and i + 1 < len(argv):
            moved += argv[i:i + 2]
            i += 2
        else:
            break
    return argv[i:] + moved if moved and i < len(argv) else argv


def run(args: argparse.Namespace) -> int:
    """Run a client command; the exit status (errors printed, never raised)."""
    handler: Callable[[argparse.Namespace], int] = args.cli_handler
    try:
        return handler(args)
    except ParamschedError as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"paramsched {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a value the client core refused before sending it
        print(f"paramsched {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def describe(exc: ParamschedError) -> str:
    """``CODE: details`` in the server's words (plus the client's hint), or the message."""
    code = exc.code.name if exc.code is not None else None
    details, hint = getattr(exc, "details", None), getattr(exc, "hint", "")
    text = f"{code}: {details}" if code and details else (f"{code}: {exc}" if code else str(exc))
    return text + (f"\nhint: {hint}" if hint else "")
