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
import csv
import json
import logging
import math
import os
import re
import runpy
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import grpc

from paramsched.api.v1 import scheduler_pb2 as pb
from paramsched.api.v1 import scheduler_pb2_grpc as pb_grpc

from .schedules import ConfigError, Decisions, GroupValues, JobSpec, Timeline, build_job_spec

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_BASE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
ADAM_BETA2 = 0.999
# Iterations per GetValues call / engine chunk: bounded messages, and a progress step.
VALUES_PER_CALL = 200_000
ENGINE_CHUNK = 8192
MAX_PREVIEW_ITERATIONS = 100_000  # the server's limit on RescheduleJob.preview_iterations
PROGRESS_MIN_ITERATIONS = 50_000
PARAM_HELP = "a param_groups key: lr, momentum, weight_decay..."
MODES = {
    "replace": pb.RescheduleJobRequest.REPLACE,
    "multiply": pb.RescheduleJobRequest.MULTIPLY,
    "stretch": pb.RescheduleJobRequest.STRETCH,
}
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class UsageError(Exception):
    """Bad input from the user (flags, config files): exit status 2, like argparse."""


class CliError(Exception):
    """A command that could not finish for a reason other than a server error (exit 1)."""


# -- argument types ------------------------------------------------------------------
def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PARAMSCHED_{name}", default)


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _nonnegative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1, got 0")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _start_factor(text: str) -> float:
    """A LinearParamScheduler start_factor: MMEngine needs 0 < F <= 1."""
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated names, e.g. lr,momentum")
    return names


def _indices(text: str) -> list[int]:
    try:
        return [_nonnegative_int(n.strip()) for n in text.split(",") if n.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"expected group indices like 0,1: {exc}") from None


def _assignments(text: str) -> dict[str, float]:
    """``lr=0.1,momentum=0.9`` -> {"lr": 0.1, "momentum": 0.9}."""
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs, got {item!r}")
        out[name.strip()] = _finite(raw.strip())
    return out


# -- the parser ----------------------------------------------------------------------
def _connection_flags() -> argparse.ArgumentParser:
    """Flags every server-talking command shares (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("server")
    g.add_argument("--target", default=_env("TARGET", DEFAULT_TARGET),
                   help="HOST:PORT of the server (env PARAMSCHED_TARGET; "
                        f"default {DEFAULT_TARGET})")
    g.add_argument("--token", default=_env("TOKEN"),
                   help="bearer token, sent as 'authorization: Bearer ...' (env PARAMSCHED_TOKEN)")
    g.add_argument("--tls", action="store_true",
                   help="use TLS with the system's root certificates")
    g.add_argument("--tls-ca", default=_env("TLS_CA"),
                   help="PEM CA bundle that signed the server's certificate; implies TLS "
                        "(env PARAMSCHED_TLS_CA)")
    g.add_argument("--tls-cert", default=_env("TLS_CLIENT_CERT"),
                   help="PEM client certificate for mutual TLS (env PARAMSCHED_TLS_CLIENT_CERT)")
    g.add_argument("--tls-key", default=_env("TLS_CLIENT_KEY"),
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
    g.add_argument("--reason", default="", help="why (kept in the job's history)")
    return p


def add_commands(sub: Any) -> None:
    """Add the client commands to ``paramsched``'s subparsers (called by app.make_parser)."""
    conn, change = _connection_flags(), _change_flags()

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str,
                parents: Sequence[argparse.ArgumentParser] = (), parent: Any = sub,
                ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=text, description=text, parents=list(parents), allow_abbrev=False)
        p.set_defaults(cli_handler=handler)
        return p

    jobs = sub.add_parser("jobs", help="list, show, audit and delete jobs",
                          allow_abbrev=False).add_subparsers(dest="jobs_command", required=True)
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
    p.add_argument("--mode", choices=tuple(MODES), default="replace")
    p.add_argument("--params", type=_names, metavar="lr,momentum",
                   help="params to change (default: those the configs schedule)")
    p.add_argument("--start", type=_assignments, metavar="lr=0.01",
                   help="start from these values instead of those in force")
    p.add_argument("--max-iters", type=_positive_int, help="new length of training")

    p = command("set", cmd_change, "set a param to a value and hold it", [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p.add_argument("value", type=_finite)
    p = command("scale", cmd_change, "multiply a param's remaining curve by a factor",
                [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p.add_argument("factor", type=_positive)
    p = command("hold", cmd_change, "hold a param at the value in force", [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p = command("decay", cmd_change, "decay a param to a value over N iterations, then hold",
                [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p.add_argument("--to", type=_finite, required=True, metavar="VALUE")
    p.add_argument("--over", type=_positive_int, required=True, metavar="N")
    p.add_argument("--shape", choices=("linear", "cosine"), default="linear")
    p = command("rewarm", cmd_change, "ramp a param from a fraction of its curve back to it",
                [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("param", help=PARAM_HELP)
    p.add_argument("--from-factor", type=_start_factor, required=True, metavar="F")
    p.add_argument("--over", type=_positive_int, required=True, metavar="N")
    p = command("extend", cmd_change, "stretch the remaining curve onto a new length "
                "(extends or shortens training)", [conn, change])
    p.add_argument("job", help="job id")
    p.add_argument("--max-iters", type=_positive_int, required=True)

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


def _format_base(base: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in base.items())


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
        channel = grpc.insecure_channel(args.target, options=_CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(args.target, credentials, options=_CHANNEL_OPTIONS)
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    try:
        yield Session(pb_grpc.SchedulerServiceStub(channel), metadata, args.timeout)
    finally:
        channel.close()


# -- values: plans, curves, the engine -----------------------------------------------
@dataclass
class Curves:
    """Values of every param of every group for consecutive iterations from ``start``."""

    start: int
    params: tuple[str, ...]
    num_groups: int
    rows: list[GroupValues] = field(default_factory=list)
    waits_for_epoch: int | None = None  # the rows stop early: a pending plateau decision

    @property
    def stop(self) -> int:
        return self.start + len(self.rows)

    def series(self, param: str, group: int, start: int | None = None,
               stop: int | None = None) -> tuple[list[int], list[float]]:
        """(iterations, values) of one param of one group, optionally cut to [start, stop)."""
        lo = max(self.start, self.start if start is None else start)
        hi = min(self.stop, self.stop if stop is None else stop)
        xs = list(range(lo, hi))
        ys = [self.rows[t - self.start][group][param] for t in xs]
        return xs, ys

    def extend(self, other: Curves) -> None:
        self.rows.extend(other.rows)
        self.waits_for_epoch = other.waits_for_epoch


def decode_plan(plan: pb.Plan) -> Curves:
    """A Plan's flat ``values[(i * num_groups + g) * len(params) + p]`` as Curves."""
    params, groups = tuple(plan.params), plan.num_groups
    width = groups * len(params)
    values = list(plan.values)
    rows = []
    for i in range(plan.num_iterations):
        row = values[i * width:(i + 1) * width]
        rows.append([{p: row[g * len(params) + k] for k, p in enumerate(params)}
                     for g in range(groups)])
    waits = plan.waits_for_epoch if plan.HasField("waits_for_epoch") else None
    return Curves(plan.start_iteration, params, groups, rows, waits)


class ProgressBar:
    """A one-line text bar, redrawn in place; only on a terminal, so logs stay clean."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 enabled: bool | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = total >= PROGRESS_MIN_ITERATIONS and self.stream.isatty()
        self.enabled = enabled
        self.width = width

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        filled = self.width * done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        percent = 100 * done // self.total
        self.stream.write(f"\r{self.label} [{bar}] {percent:3d}% {done}/{self.total}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def fetch_values(session: Session, job: pb.Job, start: int, stop: int,
                 progress: ProgressBar | None = None) -> Curves:
    """GetValues in bounded chunks (a long job's values exceed one message's limit)."""
    per_call = max(1, VALUES_PER_CALL // max(1, job.num_groups * max(1, len(job.params))))
    curves: Curves | None = None
    t = start
    while t < stop:
        plan = session.call("GetValues", pb.GetValuesRequest(
            job_id=job.job_id, start_iteration=t, stop_iteration=min(stop, t + per_call))).plan
        chunk = decode_plan(plan)
        if curves is None:
            curves = chunk
        else:
            curves.extend(chunk)
        t += len(chunk.rows)
        if progress is not None:
            progress.update(t - start)
        if not chunk.rows or chunk.waits_for_epoch is not None:
            break
    if progress is not None:
        progress.close()
    return curves or Curves(start, tuple(job.params), job.num_groups)


def simulate(spec: JobSpec, progress: ProgressBar | None = None) -> Curves:
    """A spec's values for iterations 0..max_iters, computed locally in chunks.

    ReduceOnPlateau depends on validation metrics nobody has here: every epoch is
    simulated as "no validation ran", so those schedulers hold their value.
    """
    decisions: Decisions = {}
    if any(s.is_plateau for s in spec.schedulers) and spec.max_epochs:
        decisions = {epoch: None for epoch in range(spec.max_epochs)}
    timeline = Timeline(spec)
    curves = Curves(0, spec.params, spec.num_groups)
    total = spec.max_iters + 1
    for start in range(0, total, ENGINE_CHUNK):
        stop = min(total, start + ENGINE_CHUNK)
        curves.rows.extend(timeline.values_range(start, stop, decisions, partial=True))
        if progress is not None:
            progress.update(len(curves.rows))
        if len(curves.rows) < stop:
            break
    if progress is not None:
        progress.close()
    return curves


# -- config files --------------------------------------------------------------------
@dataclass
class ConfigFile:
    """What a config file says: the schedulers, and optionally the optimizer and length."""

    param_scheduler: list[dict[str, Any]]
    base: dict[str, Any] | None = None
    optimizer: str | None = None
    max_epochs: int | None = None
    max_iters: int | None = None


# PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string; configs mean a number.
_YAML_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _yaml_numbers(value: Any) -> Any:
    if isinstance(value, str) and _YAML_EXPONENT.match(value):
        return float(value)
    if isinstance(value, list):
        return [_yaml_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml_numbers(v) for k, v in value.items()}
    return value


def _read_document(path: Path) -> Any:
    """The file's top-level object: a module's globals, or the JSON / YAML document."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".py":
            return runpy.run_path(str(path))
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except Exception as exc:  # a config module is user code: report, do not crash
        raise UsageError(f"{path}: {type(exc).__name__}: {exc}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{path}: invalid JSON: {exc}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CliError("YAML configs need PyYAML: pip install 'paramsched[plot]'") from None
        try:
            return _yaml_numbers(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: invalid YAML: {exc}") from None
    raise UsageError(f"{path}: expected a .py, .json, .yaml or .yml file")


def _plain(value: Any) -> Any:
    """JSON-able copy of a config: tuples -> lists, ``type=LinearLR`` (a class) -> its name."""
    if isinstance(value, Mapping):
        return {str(k): (v.__name__ if k == "type" and isinstance(v, type) else _plain(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _schedulers(raw: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(raw, Mapping) and "type" in raw:
        raw = [raw]
    if not isinstance(raw, list | tuple) or not all(isinstance(c, Mapping) for c in raw):
        raise UsageError(f"{where}: expected a list of scheduler config dicts")
    return [_plain(c) for c in raw]


def _optimizer_of(document: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Initial values and kind ('sgd'/'adam') from MMEngine's ``optim_wrapper.optimizer``."""
    wrapper = document.get("optim_wrapper")
    optimizer = wrapper.get("optimizer") if isinstance(wrapper, Mapping) else None
    if not isinstance(optimizer, Mapping):
        optimizer = document.get("optimizer")
    if not isinstance(optimizer, Mapping):
        return None, None
    base: dict[str, Any] = {}
    for key, value in optimizer.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            base[key] = float(value)
        elif key == "betas" and isinstance(value, list | tuple):
            base[key] = [float(v) for v in value]
    kind = optimizer.get("type")
    kind_name = kind.__name__ if isinstance(kind, type) else str(kind or "")
    return (base or None), ("adam" if "adam" in kind_name.lower() else None)


def load_config(path: str | Path) -> ConfigFile:
    """Read a config: Python (``param_scheduler = ...``), JSON or YAML.

    A JSON/YAML document is the list itself or a dict with key ``param_scheduler``.
    From an MMEngine config, ``optim_wrapper.optimizer`` gives the initial values and
    ``train_cfg`` the length, when the command line does not.
    """
    path = Path(path)
    document = _read_document(path)
    if not isinstance(document, Mapping) or "type" in document:
        return ConfigFile(_schedulers(document, str(path)))
    if "param_scheduler" not in document:
        raise UsageError(f"{path}: no 'param_scheduler' in it")
    config = ConfigFile(_schedulers(document["param_scheduler"], f"{path}: param_scheduler"))
    config.base, config.optimizer = _optimizer_of(document)
    train = document.get("train_cfg")
    if isinstance(train, Mapping):
        epochs, iters = train.get("max_epochs"), train.get("max_iters")
        config.max_epochs = epochs if isinstance(epochs, int) else None
        config.max_iters = iters if isinstance(iters, int) and config.max_epochs is None else None
    return config


def configs_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``reschedule``'s configs from --config or --json (none: hold / start values only)."""
    if args.config:
        return load_config(args.config).param_scheduler
    if args.json:
        try:
            return _schedulers(json.loads(args.json), "--json")
        except ValueError as exc:
            raise UsageError(f"--json: invalid JSON: {exc}") from None
    return []


# -- requests for changes ------------------------------------------------------------
def _change_request(args: argparse.Namespace, mode: str, *,
                    configs: Sequence[Mapping[str, Any]] = (), params: Sequence[str] = (),
                    start_values: Mapping[str, float] | None = None,
                    max_iters: int | None = None) -> pb.RescheduleJobRequest:
    request = pb.RescheduleJobRequest(
        job_id=args.job, mode=MODES[mode], param_scheduler_json=json.dumps(list(configs)),
        params=list(params), groups=args.groups or [], start_values=dict(start_values or {}),
        dry_run=args.dry_run, force=args.force, action=args.command, reason=args.reason)
    if args.from_iteration is not None:
        request.from_iteration = args.from_iteration
    if max_iters is not None:
        request.max_iters = max_iters
    return request


def _decay_config(args: argparse.Namespace) -> dict[str, Any]:
    """One config reaching ``--to`` at from + N and holding it (end = N + 1)."""
    if args.shape == "cosine":
        return {"type": "CosineAnnealingParamScheduler", "param_name": args.param,
                "T_max": args.over, "eta_min": args.to, "by_epoch": False, "end": args.over + 1}
    return {"type": "PolyParamScheduler", "param_name": args.param, "eta_min": args.to,
            "power": 1.0, "by_epoch": False, "end": args.over + 1}


def _rewarm_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"type": "LinearParamScheduler", "param_name": args.param,
            "start_factor": args.from_factor, "end_factor": 1.0, "by_epoch": False,
            "end": args.over + 1}


REQUESTS: dict[str, Callable[[argparse.Namespace], pb.RescheduleJobRequest]] = {
    "reschedule": lambda a: _change_request(
        a, a.mode, configs=configs_from_args(a), params=a.params or (),
        start_values=a.start, max_iters=a.max_iters),
    "set": lambda a: _change_request(a, "replace", params=[a.param],
                                     start_values={a.param: a.value}),
    "scale": lambda a: _change_request(a, "multiply", params=[a.param],
                                       start_values={a.param: a.factor}),
    "hold": lambda a: _change_request(a, "replace", params=[a.param]),
    "decay": lambda a: _change_request(a, "replace", params=[a.param],
                                       configs=[_decay_config(a)]),
    "rewarm": lambda a: _change_request(a, "multiply", params=[a.param],
                                        configs=[_rewarm_config(a)]),
    "extend": lambda a: _change_request(a, "stretch", max_iters=a.max_iters),
}


def build_request(args: argparse.Namespace) -> pb.RescheduleJobRequest:
    """The RescheduleJob request a change command stands for."""
    return REQUESTS[args.command](args)


# -- output helpers ------------------------------------------------------------------
def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [headers, *rows]]
    return "\n".join(lines)


def _furthest(job: pb.Job) -> int:
    return max((p.iteration for p in job.progress), default=0)


def _length(job: pb.Job) -> str:
    """Training length; in epochs too for an epoch-based job (a change may make it
    a fractional number of epochs)."""
    if job.spec.HasField("max_epochs") and job.epoch_length:
        return (f"{job.max_iters} iterations ({job.max_iters / job.epoch_length:g} epochs "
                f"of {job.epoch_length})")
    return f"{job.max_iters} iterations"


def _values_table(values: GroupValues, params: Sequence[str]) -> str:
    rows = [[str(g), *(_fmt(v[p]) for p in params)] for g, v in enumerate(values)]
    return _table(["group", *params], rows)


# -- jobs ----------------------------------------------------------------------------
def cmd_jobs_list(args: argparse.Namespace) -> int:
    rows = []
    with connect(args) as session:
        token = ""
        while True:
            reply = session.call("ListJobs", pb.ListJobsRequest(prefix=args.prefix,
                                                                page_token=token))
            for job in reply.jobs:
                rows.append([job.job_id, str(job.generation),
                             f"{_furthest(job)}/{job.max_iters}", str(job.issued_until),
                             f"{len(job.progress)}/{job.world_size or '?'}",
                             str(job.num_changes), ",".join(job.params), _when(job.created_at)])
            token = reply.next_page_token
            if not token:
                break
    if not rows:
        print("no jobs" + (f" with prefix {args.prefix!r}" if args.prefix else ""))
        return 0
    print(_table(["JOB", "GEN", "ITERATION", "PLANNED", "RANKS", "CHANGES", "PARAMS",
                  "CREATED"], rows))
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with connect(args) as session:
        job: pb.Job = session.call("GetJob", pb.GetJobRequest(job_id=args.job)).job
        at = min(_furthest(job), job.max_iters)
        now = decode_plan(session.call("GetValues", pb.GetValuesRequest(
            job_id=args.job, start_iteration=at, stop_iteration=at + 1)).plan)
    fields = [
        ("job", job.job_id),
        ("created", _when(job.created_at)),
        ("generation", str(job.generation)),
        ("length", _length(job)),
        ("params", f"{', '.join(job.params)} ({job.num_groups} param groups"
                   + (", momentum via betas[0])" if job.momentum_via_betas else ")")),
        ("plan horizon", f"{job.issued_until} (values below it were handed out)"),
        ("changes", f"{job.num_changes} in this generation"),
        ("world size", str(job.world_size or "unknown")),
    ]
    print("\n".join(f"{name + ':':<14}{value}" for name, value in fields))
    print("progress:")
    for p in job.progress:
        print(f"  rank {p.rank}: iteration {p.iteration}")
    if not job.progress:
        print("  (no rank has reported yet)")
    if now.rows:
        print(f"current values (iteration {at}):")
        print(_indent(_values_table(now.rows[0], now.params)))
    else:
        print(f"current values (iteration {at}): waiting for the validation decision of "
              f"epoch {now.waits_for_epoch}")
    return 0


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _details(details_json: str) -> str:
    """The change as sent, without empty fields (defaults), the iteration and the
    values in force there ("resolved"), which the other lines already show."""
    try:
        details = json.loads(details_json) if details_json else None
    except ValueError:
        return details_json
    if isinstance(details, dict):
        details = {k: v for k, v in details.items()
                   if k not in ("from_iteration", "resolved") and v not in (None, [], {}, "")}
        configs = details.get("param_scheduler")
        if isinstance(configs, list):  # the type first: it says the most when shortened
            details["param_scheduler"] = [
                {"type": c["type"], **c} if isinstance(c, dict) and "type" in c else c
                for c in configs]
    return json.dumps(details, separators=(", ", ": ")) if details else ""


def _entry_lines(entry: pb.AuditEntry, width: int = 160) -> list[str]:
    """One audit entry: a headline, the values at its iteration per group (before ->
    after, as recorded), what was sent (shortened) and the reason."""
    lines = [f"{_when(entry.time)}  {entry.action}  by {entry.principal}  at iteration "
             f"{entry.iteration}  (generation {entry.generation})"]
    for g, (before, after) in enumerate(zip(entry.before, entry.after, strict=False)):
        names = list(dict.fromkeys([*before.values, *after.values]))
        pairs = [f"{p} {_fmt(before.values[p]) if p in before.values else '-'} -> "
                 f"{_fmt(after.values[p]) if p in after.values else '-'}" for p in names]
        if pairs:
            lines.append(f"    group {g}: " + ", ".join(pairs))
    details = _details(entry.details_json)
    if details:
        lines.append("    details: " + (details if len(details) <= width
                                         else details[:width - 3] + "..."))
    if entry.reason:
        lines.append(f"    reason: {entry.reason}")
    return lines


def cmd_jobs_history(args: argparse.Namespace) -> int:
    with connect(args) as session:
        entries = session.call("GetJobHistory",
                               pb.GetJobHistoryRequest(job_id=args.job)).entries
    if not entries:
        print(f"no history for job {args.job!r}")
    for entry in entries:
        print("\n".join(_entry_lines(entry)))
    return 0


def cmd_jobs_delete(args: argparse.Namespace) -> int:
    with connect(args) as session:
        deleted = session.call("DeleteJob", pb.DeleteJobRequest(job_id=args.job)).deleted
    if not deleted:
        print(f"error: NOT_FOUND: no job {args.job!r}", file=sys.stderr)
        return 1
    print(f"deleted job {args.job!r}")
    return 0


# -- changes -------------------------------------------------------------------------
def cmd_change(args: argparse.Namespace) -> int:
    request = build_request(args)
    with connect(args) as session:
        current = None
        if args.plot:
            _figure_class()  # fail before changing anything if matplotlib is missing
            current = _current_schedule(session, request)
        reply: pb.RescheduleJobResponse = session.call("RescheduleJob", request)
        after = decode_plan(reply.after)
        end = reply.job.max_iters + 1
        if args.plot and reply.applied and after.stop < end and after.waits_for_epoch is None:
            after.extend(fetch_values(session, reply.job, after.stop, end))
    print(_change_summary(request, reply))
    if current is not None:
        _plot_change(args.plot, request, reply, current, after)
    return 0


def _current_schedule(session: Session, request: pb.RescheduleJobRequest) -> Curves:
    """The job's whole schedule before the change; sets the request's preview length to
    cover the rest of training (old or new length), within the server's limit."""
    job: pb.Job = session.call("GetJob", pb.GetJobRequest(job_id=request.job_id)).job
    end = max(job.max_iters, request.max_iters if request.HasField("max_iters") else 0) + 1
    start = request.from_iteration if request.HasField("from_iteration") else 0
    request.preview_iterations = max(1, min(MAX_PREVIEW_ITERATIONS, end - start))
    return fetch_values(session, job, 0, job.max_iters + 1,
                        ProgressBar(job.max_iters + 1, "fetching"))


def _joined(current: Curves, after: Curves) -> Curves:
    """``after`` led by the last unchanged iteration, so the line shows the step at s."""
    s = after.start
    if s == 0 or not current.start <= s - 1 < current.stop or not after.rows or any(
            p not in current.params for p in after.params):
        return after
    lead = [{p: v[p] for p in after.params} for v in current.rows[s - 1 - current.start]]
    return Curves(s - 1, after.params, after.num_groups, [lead, *after.rows],
                  after.waits_for_epoch)


def _plot_change(out: str, request: pb.RescheduleJobRequest, reply: pb.RescheduleJobResponse,
                 current: Curves, after: Curves) -> None:
    """Before (dotted) vs after (solid) from from_iteration on, the unchanged past before."""
    s = reply.from_iteration
    if not reply.applied and after.stop < reply.job.max_iters + 1 and after.rows:
        print(f"note: a dry run previews at most {MAX_PREVIEW_ITERATIONS} iterations; the "
              f"'after' curve stops at iteration {after.stop - 1}", file=sys.stderr)
    layers = [Layer(current, None, "-", 1.0, stop=s),
              Layer(current, "before", ":", 0.7, start=max(0, s - 1)),
              Layer(_joined(current, after), "after", "-", 1.0)]
    dry = " (dry run)" if not reply.applied else ""
    draw(out, layers, title=f"{request.job_id}: {request.action} from iteration {s}{dry}",
         epoch_length=reply.job.epoch_length if reply.job.HasField("epoch_length") else None,
         marks=[(s, "from")])
    print(f"wrote {out}")


def _change_summary(request: pb.RescheduleJobRequest, reply: pb.RescheduleJobResponse) -> str:
    """What happened (or would), and the values at from_iteration per group."""
    state = ("applied" if reply.applied else "dry run (nothing changed)")
    lines = [f"{request.action} on job {request.job_id!r} from iteration "
             f"{reply.from_iteration}: {state}"]
    if reply.applied:
        lines[0] += f"; generation {reply.job.generation}, change #{reply.job.num_changes}"
    if request.HasField("max_iters"):
        lines.append(f"training length: {request.max_iters} iterations")
    before, after = decode_plan(reply.before), decode_plan(reply.after)
    old = before.rows[0] if before.rows else [dict(v.values) for v in reply.entry.before]
    new = after.rows[0] if after.rows else [dict(v.values) for v in reply.entry.after]
    for g in range(max(len(old), len(new))):
        lines.append(f"group {g}:")
        b, a = (old[g] if g < len(old) else {}), (new[g] if g < len(new) else {})
        rows = [[p, _fmt(b[p]) if p in b else "-", "->", _fmt(a[p]) if p in a else "-",
                 "" if b.get(p) == a.get(p) else "*"]
                for p in dict.fromkeys([*b, *a])]
        lines.append(_indent(_table(["param", "before", "", "after", ""], rows)))
    return "\n".join(lines)


# -- plot ----------------------------------------------------------------------------
@dataclass
class Layer:
    """One set of curves in a figure, drawn in each group's colour with this style."""

    curves: Curves
    label: str | None  # None: no legend entry
    style: str
    alpha: float
    start: int | None = None
    stop: int | None = None


def _figure_class() -> Any:
    """matplotlib's ``Figure`` class, imported only when a plot is wanted.

    The object API (no pyplot) needs no display and no global backend: it renders
    with Agg whatever backend the process has, so it is headless by construction.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CliError("plotting needs matplotlib: pip install 'paramsched[plot]'") from None
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font cache notices
    return Figure


def draw(out: str, layers: Sequence[Layer], *, title: str, epoch_length: int | None,
         marks: Sequence[tuple[int, str]] = ()) -> None:
    """One subplot per param, x = iteration (epochs on top), one colour per group."""
    figure_class = _figure_class()
    params = list(dict.fromkeys(p for layer in layers for p in layer.curves.params))
    if not params:
        raise CliError("nothing to plot: no scheduled params")
    fig = figure_class(figsize=(9, 1.0 + 2.6 * len(params)), layout="constrained")
    axes = fig.subplots(len(params), 1, sharex=True, squeeze=False)[:, 0]
    for ax, param in zip(axes, params, strict=True):
        _draw_param(ax, param, layers)
        for iteration, label in marks:
            ax.axvline(iteration, color="grey", linewidth=0.8, linestyle="--")
            ax.annotate(label, (iteration, 1.0), xycoords=("data", "axes fraction"),
                        fontsize=8, color="grey", ha="left", va="top")
    axes[-1].set_xlabel("iteration")
    if epoch_length:
        top = axes[0].secondary_xaxis(
            "top", functions=(lambda x: x / epoch_length, lambda e: e * epoch_length))
        top.set_xlabel("epoch")
    fig.suptitle(title)
    try:
        fig.savefig(out, dpi=110)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write {out}: {exc}") from None


def _draw_param(ax: Any, param: str, layers: Sequence[Layer]) -> None:
    for layer in layers:
        curves = layer.curves
        if param not in curves.params:
            continue
        for g in range(curves.num_groups):
            xs, ys = curves.series(param, g, layer.start, layer.stop)
            if not xs:
                continue
            label = None  # a layer labelled None (context) stays out of the legend
            if layer.label is not None:
                group = f"group {g}" if curves.num_groups > 1 else ""
                label = ", ".join(x for x in (group, layer.label) if x) or None
            ax.plot(xs, ys, linestyle=layer.style, alpha=layer.alpha, color=f"C{g}",
                    label=label, linewidth=1.4)
    ax.set_ylabel(param)
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if len(handles) > 1:
        ax.legend(fontsize=8, loc="best")


def write_csv(path: str, curves: Curves, epoch_length: int | None,
              applied_below: int | None = None) -> None:
    """One row per (iteration, group); floats as ``repr`` so they read back exactly."""
    headers = ["iteration", *(["epoch"] if epoch_length else []), "group", *curves.params]
    if applied_below is not None:
        headers.append("applied")
    try:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(headers)
            for offset, row in enumerate(curves.rows):
                t = curves.start + offset
                for g, values in enumerate(row):
                    cells: list[object] = [t, *([t // epoch_length] if epoch_length else []), g]
                    cells += [repr(values[p]) for p in curves.params]
                    if applied_below is not None:
                        cells.append(int(t < applied_below))
                    writer.writerow(cells)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


def _base_groups(args: argparse.Namespace, config: ConfigFile) -> list[dict[str, Any]]:
    """The param groups' initial values: --base (per group) > the config's optimizer >
    the default; Adam turns momentum into betas = (momentum, 0.999)."""
    bases: list[dict[str, Any]] = [dict(b) for b in args.base] if args.base else [
        dict(config.base or DEFAULT_BASE)]
    count = args.groups or len(bases)
    if len(bases) == 1:
        bases = [dict(bases[0]) for _ in range(count)]
    elif len(bases) != count:
        raise UsageError(f"--groups {count} but --base given {len(bases)} times")
    if (args.optimizer or config.optimizer) == "adam":
        for base in bases:
            if "momentum" in base and "betas" not in base:
                base["betas"] = [base.pop("momentum"), ADAM_BETA2]
    return bases


def _config_spec(args: argparse.Namespace) -> tuple[JobSpec, ConfigFile]:
    config = load_config(args.config)
    epochs = args.epochs if args.epochs or args.max_iters else config.max_epochs
    iters = args.max_iters if args.epochs or args.max_iters else config.max_iters
    if epochs is None and iters is None:
        raise UsageError("give the length: --epochs E --epoch-length L, or --max-iters N")
    if epochs is not None and args.epoch_length is None:
        raise UsageError("--epochs needs --epoch-length")
    try:
        spec = build_job_spec(config.param_scheduler, _base_groups(args, config),
                              epoch_length=args.epoch_length, max_epochs=epochs,
                              max_iters=None if epochs is not None else iters)
    except ConfigError as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    return spec, config


def cmd_plot(args: argparse.Namespace) -> int:
    if bool(args.config) == bool(args.job):
        raise UsageError("give a CONFIG file or --job JOB (one of them)")
    if not (args.out or args.csv):
        raise UsageError("nothing to write: give --out FILE.png and/or --csv FILE.csv")
    if args.job:
        return _plot_job(args)
    if args.out:
        _figure_class()  # fail before a long simulation if matplotlib is missing
    spec, _ = _config_spec(args)
    if any(s.is_plateau for s in spec.schedulers):
        print("note: ReduceOnPlateau needs validation metrics; plotted as if no validation "
              "ran (its value is held)", file=sys.stderr)
    curves = simulate(spec, ProgressBar(spec.max_iters + 1, "simulating"))
    if args.csv:
        write_csv(args.csv, curves, spec.epoch_length)
        print(f"wrote {args.csv}")
    if args.out:
        draw(args.out, [Layer(curves, "", "-", 1.0)], title=args.title or Path(args.config).name,
             epoch_length=spec.epoch_length)
        print(f"wrote {args.out}")
    return 0


def _plot_job(args: argparse.Namespace) -> int:
    """A live job: the applied past solid, the planned future dashed."""
    if args.out:
        _figure_class()
    with connect(args) as session:
        job: pb.Job = session.call("GetJob", pb.GetJobRequest(job_id=args.job)).job
        total = job.max_iters + 1
        curves = fetch_values(session, job, 0, total, ProgressBar(total, "fetching"))
    now = min(_furthest(job), job.max_iters)
    if curves.waits_for_epoch is not None:
        print(f"note: values from iteration {curves.stop} on wait for the validation decision "
              f"of epoch {curves.waits_for_epoch}", file=sys.stderr)
    epoch_length = job.epoch_length if job.HasField("epoch_length") else None
    if args.csv:
        write_csv(args.csv, curves, epoch_length, applied_below=now)
        print(f"wrote {args.csv}")
    if args.out:
        layers = [Layer(curves, "planned", "--", 0.8, start=now)]
        if now > 0:
            layers.insert(0, Layer(curves, "applied", "-", 1.0, stop=now + 1))
        draw(args.out, layers, title=args.title or f"job {args.job} (generation "
             f"{job.generation})", epoch_length=epoch_length, marks=[(now, "now")])
        print(f"wrote {args.out}")
    return 0
