"""The argparse tree of the ``paramsched`` command."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import paramsched

from .changes import cmd_change
from .common import (
    DEFAULT_BASE,
    DEFAULT_TARGET,
    MODES,
    PARAM_HELP,
    _assignments,
    _finite,
    _indices,
    _names,
    _nonnegative_int,
    _positive,
    _positive_int,
    _start_factor,
    env,
)
from .health import cmd_health
from .jobs import cmd_jobs_delete, cmd_jobs_history, cmd_jobs_list, cmd_jobs_show
from .plots import cmd_plot

DESCRIPTION = ("paramsched: the authoritative hyperparameter schedules of training jobs. "
               "Run a server, inspect jobs, change their schedules while they run, plot "
               "schedules.")
EPILOG = ("Every server-talking command reads the server's address from --target or "
          f"PARAMSCHED_TARGET (default {DEFAULT_TARGET}). `paramsched COMMAND --help` "
          "describes each command; docs/CLI.md has them all.")
VERSION = f"paramsched {paramsched.__version__}"


def make_parser() -> argparse.ArgumentParser:
    """``paramsched``: ``serve`` (delegated to ``paramsched.server.app``), ``health``
    and the client commands."""
    parser = argparse.ArgumentParser(prog="paramsched", description=DESCRIPTION,
                                     epilog=EPILOG, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=VERSION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Listed for --help only: `paramsched serve ...` is handed to the server's own
    # parser before this one runs (see paramsched.cli.main).
    sub.add_parser("serve", help="run the scheduler server (paramsched serve --help)",
                   add_help=False).add_argument("serve_args", nargs=argparse.REMAINDER)
    health = sub.add_parser("health", help="check a server with the gRPC health service "
                            "(exit 0 when SERVING; for container probes)", allow_abbrev=False)
    health.add_argument("--target", default=env("HEALTH_TARGET", env("TARGET", DEFAULT_TARGET)),
                        help="HOST:PORT to check (env PARAMSCHED_HEALTH_TARGET, else "
                             f"PARAMSCHED_TARGET; default {DEFAULT_TARGET})")
    health.add_argument("--timeout", type=_positive, default=5.0,
                        help="seconds to wait for the answer (default 5)")
    health.add_argument("--version", action="version", version=VERSION)
    health.set_defaults(cli_handler=cmd_health)
    add_commands(sub)
    return parser


# -- the parser ----------------------------------------------------------------------
def _connection_flags() -> argparse.ArgumentParser:
    """Flags every server-talking command shares (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("server")
    g.add_argument("--target", default=env("TARGET", DEFAULT_TARGET),
                   help="HOST:PORT of the server (env PARAMSCHED_TARGET; "
                        f"default {DEFAULT_TARGET})")
    g.add_argument("--token", default=env("TOKEN"),
                   help="bearer token, sent as 'authorization: Bearer ...' (env PARAMSCHED_TOKEN)")
    g.add_argument("--tls", action="store_true",
                   help="use TLS with the system's root certificates")
    g.add_argument("--tls-ca", default=env("TLS_CA"),
                   help="PEM CA bundle that signed the server's certificate; implies TLS "
                        "(env PARAMSCHED_TLS_CA)")
    g.add_argument("--tls-cert", default=env("TLS_CLIENT_CERT"),
                   help="PEM client certificate for mutual TLS (env PARAMSCHED_TLS_CLIENT_CERT)")
    g.add_argument("--tls-key", default=env("TLS_CLIENT_KEY"),
                   help="PEM client key for mutual TLS (env PARAMSCHED_TLS_CLIENT_KEY)")
    g.add_argument("--timeout", type=_positive, default=30.0,
                   help="seconds per RPC (default 30)")
    return p


def _change_flags() -> argparse.ArgumentParser:
    """Flags every schedule change shares (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("change")
    g.add_argument("--from", dest="from_iteration", type=_nonnegative_int, metavar="N",
                   help="iteration the change takes effect at (default: the first one no "
                        "plan handed out covers)")
    g.add_argument("--groups", type=_indices, metavar="0,1",
                   help="param groups to change (default: all)")
    g.add_argument("--force", action="store_true",
                   help="allow a jump beyond the job's max_jump_factor")
    g.add_argument("--dry-run", action="store_true",
                   help="only print the values before and after; change nothing")
    g.add_argument("--plot", metavar="FILE.png", help="draw the curves before vs after")
    g.add_argument("--log-y", action="store_true", help="--plot with a logarithmic value axis")
    g.add_argument("--reason", default="", help="why (kept in the job's history)")
    return p


def add_commands(sub: Any) -> None:
    """Add the client commands to ``paramsched``'s subparsers."""
    conn, change = _connection_flags(), _change_flags()

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str,
                parents: Sequence[argparse.ArgumentParser] = (), parent: Any = sub,
                ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=text, description=text, parents=list(parents), allow_abbrev=False)
        p.set_defaults(cli_handler=handler)
        p.add_argument("--version", action="version", version=VERSION)
        return p

    jobs_parser = sub.add_parser("jobs", help="list, show, audit and delete jobs",
                                 description="list, show, audit and delete jobs",
                                 allow_abbrev=False)
    jobs_parser.add_argument("--version", action="version", version=VERSION)
    jobs = jobs_parser.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    p = command("list", cmd_jobs_list, "list jobs", [conn], jobs)
    p.add_argument("--prefix", default="", help="only jobs whose id starts with this")
    command("show", cmd_jobs_show, "a job's progress, current values and plan",
            [conn], jobs).add_argument("job", help="job id")
    command("history", cmd_jobs_history, "a job's audit trail",
            [conn], jobs).add_argument("job", help="job id")
    command("delete", cmd_jobs_delete, "delete a job",
            [conn], jobs).add_argument("job", help="job id")

    p = command("reschedule", cmd_change, "replace a running job's schedule from an "
                "iteration on, with MMEngine configs whose begin/end count from there",
                [conn, change])
    p.add_argument("job", help="job id")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="configs from a .py, .json or .yaml")
    source.add_argument("--json", metavar="'[...]'", help="configs as a JSON list")
    p.add_argument("--mode", choices=tuple(MODES), default="replace",
                   help="replace the remaining schedule, multiply it by a factor, or stretch "
                        "it onto --max-iters (default replace)")
    p.add_argument("--params", type=_names, metavar="lr,momentum",
                   help="params to change (default: those the configs schedule)")
    p.add_argument("--start", type=_assignments, metavar="lr=0.01",
                   help="start from these values instead of those in force")
    p.add_argument("--max-iters", type=_positive_int, metavar="N",
                   help="new length of training")

    p = command("set", cmd_change, "set a param to a value and hold it", [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p.add_argument("value", type=_finite, help="the value to hold from then on")
    p = command("scale", cmd_change, "multiply a param's remaining curve by a factor",
                [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p.add_argument("factor", type=_positive, help="the factor (> 0) on the remaining curve")
    p = command("hold", cmd_change, "hold a param at the value in force", [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p = command("decay", cmd_change, "decay a param to a value over N iterations, then hold",
                [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p.add_argument("--to", type=_finite, required=True, metavar="VALUE",
                   help="the value reached at iteration s + N, then held")
    p.add_argument("--over", type=_positive_int, required=True, metavar="N",
                   help="iterations the decay takes")
    p.add_argument("--shape", choices=("linear", "cosine"), default="linear",
                   help="the decay's curve (default linear)")
    p = command("rewarm", cmd_change, "ramp a param from a fraction of its curve back to it",
                [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p.add_argument("--from-factor", type=_start_factor, required=True, metavar="F",
                   help="the factor at iteration s, in (0, 1]")
    p.add_argument("--over", type=_positive_int, required=True, metavar="N",
                   help="iterations the factor takes to reach 1")
    p = command("extend", cmd_change, "stretch the remaining curve onto a new length "
                "(extends or shortens training)", [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("--max-iters", type=_positive_int, required=True, metavar="N",
                   help="the new length of training, in iterations")

    _add_plot(command("plot", cmd_plot, "plot a config's curves (computed locally) or a "
                      "live job's (past and plan)", [conn]))


def _add_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a .py (param_scheduler = ...), .json or .yaml file")
    p.add_argument("--job", help="plot a live job instead of a config")
    p.add_argument("--out", metavar="FILE.png", help="the figure (PNG, or any format "
                   "matplotlib knows by extension)")
    p.add_argument("--csv", metavar="FILE.csv", help="the values, one row per iteration and group")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, help="epoch-based loop: max_epochs")
    length.add_argument("--max-iters", type=_positive_int, help="iteration-based loop")
    p.add_argument("--epoch-length", type=_positive_int, help="iterations per epoch")
    p.add_argument("--base", type=_assignments, action="append", metavar="lr=0.1,...",
                   help="the optimizer's initial values; repeat once per group "
                        f"(default: the config's optimizer, else {_format_base(DEFAULT_BASE)})")
    p.add_argument("--groups", type=_positive_int, metavar="N",
                   help="number of param groups (copies of one --base)")
    p.add_argument("--optimizer", choices=("sgd", "adam"),
                   help="adam: momentum is betas[0] (default: from the config, else sgd)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--log-y", action="store_true",
                   help="logarithmic value axis (for values spanning decades)")


def _format_base(base: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in base.items())
