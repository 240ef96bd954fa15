"""The paramsched server: ``build_server`` (the factory) and ``paramsched serve``.

The ``paramsched`` console script (``paramsched.cli``) hands ``serve`` to ``main``
here; every other command is a client and lives there.

``paramsched serve`` alone runs a durable single-node server on the embedded store
(a sqlite file under ``--data-dir``); ``--redis-url`` makes Redis the authority, and
then any number of server processes can serve the same jobs.

Every flag can also be set by an environment variable (``PARAMSCHED_<FLAG>``, e.g.
``PARAMSCHED_REDIS_URL``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from paramsched.api.v1 import scheduler_pb2, scheduler_pb2_grpc

from .auth import AuthConfigError, TokenRegistry
from .errors import ServiceError
from .grpc.interceptors import ServiceInterceptor
from .grpc.servicer import SchedulerServicer
from .observability import InstrumentedStore, Metrics, configure_logging
from .service import SchedulerService
from .service.groupcommit import DEFAULT_COMMIT_DELAY
from .service.signing import StateKeyError, StateKeys
from .store import JobStore, open_store
from .store.embedded import StoreConfigError
from .web import WebServer, tls_context

log = logging.getLogger("paramsched.server")


def _env(name: str, default: str | None = None) -> str | None:
    """``PARAMSCHED_<name>``: every flag of ``serve`` has such a variable."""
    return os.environ.get(f"PARAMSCHED_{name}", default)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value

def duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2ms`` (>= 0)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    unit = "ms" if raw.endswith("ms") else raw[-1:]
    scale = units.get(unit, 0)
    try:
        value = float(raw[:-len(unit)] if scale else raw) * (scale or 1)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a duration like 3600, 90s, 15m, 12h, 30d or 2ms, got {text!r}")
    return value


def commit_delay(text: str) -> float:
    """``--commit-delay``: a duration of at most a second (a report waits that long at
    most, and only behind another report of its job)."""
    value = duration(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(
            f"must be at most 1s (reports of a job wait up to this long), got {text!r}")
    return value


SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name


def default_data_dir() -> Path:
    """The per-user data folder (``$XDG_DATA_HOME/paramsched`` or ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "paramsched"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    redis_url: str | None = None
    redis_wait_replicas: int | None = None  # None: 1 when the Redis master has replicas
    redis_wait_timeout: float = 1.0
    data_dir: str | Path | None = None
    plan_size: int = 256
    grace_seconds: float = 10.0
    tokens_file: str | None = None
    tokens_inline: str | None = None  # the JSON document itself (PARAMSCHED_TOKENS)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: clients must present a certificate it signed
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    max_message_bytes: int = 4 * 1024 * 1024
    state_key_file: str | None = None  # HMAC keys that sign checkpoint states
    http_port: int | None = None  # the web dashboard (server/web); None: off
    address_file: str | None = None  # written with HOST:PORT once the server listens
    # Cost budget of one GetValues / PreviewSchedule page, in values (doubles) of the
    # reply; None: a quarter of max_message_bytes in doubles (2 MiB of a 4 MiB limit).
    max_values_cells: int | None = None
    # The job cache's memory budget (bytes): least recently used jobs beyond it are
    # dropped; loading one again costs a keyframe read and a replay of at most a plan.
    cache_bytes: int = 256 * 1024 * 1024
    # Worker threads for long computations; past max_compute_waiting queued ones the
    # readiness health (service SERVICE_NAME) says NOT_SERVING, liveness ("") stays up.
    compute_workers: int = 2
    max_compute_waiting: int = 64
    # Finished jobs are deleted (with their keyframes; the audit trail stays) this many
    # seconds after a rank reported their end; 0 keeps them forever.
    retention_seconds: float = 30 * 86400
    # A job's reports that waited for its store write in flight go out together once
    # every rank is in, or this many seconds after the first of them (group commit).
    commit_delay: float = DEFAULT_COMMIT_DELAY


@dataclass
class RunningParts:
    """What ``build_server`` made, for tests and ``serve``."""

    server: grpc.aio.Server
    port: int
    store: JobStore
    service: SchedulerService
    health: health.aio.HealthServicer
    metrics: Metrics
    tokens: TokenRegistry
    metrics_http: Any = None
    web: WebServer | None = None
    readiness: asyncio.Task[None] | None = None
    sweeper: asyncio.Task[None] | None = None

    async def close(self, grace: float | None = None) -> None:
        for task in (self.readiness, self.sweeper):
            if task is not None:
                task.cancel()
        if self.web is not None:
            await self.web.close()
        await self.server.stop(grace)
        await self.store.close()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()


async def build_server(config: ServerConfig) -> tuple[grpc.aio.Server, int]:
    """An unstarted grpc.aio server bound to ``config.host:config.port`` (0: any free)."""
    parts = await build_parts(config)
    return parts.server, parts.port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {what} {path}: {exc}") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (and mutual TLS with ``tls_client_ca``) credentials, or None for plaintext."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise OSError("TLS needs both --tls-cert and --tls-key")
    pair = (_read(config.tls_key, "TLS key"), _read(config.tls_cert, "TLS certificate"))
    if config.tls_client_ca:
        return grpc.ssl_server_credentials(
            [pair], root_certificates=_read(config.tls_client_ca, "client CA"),
            require_client_auth=True)
    return grpc.ssl_server_credentials([pair])


async def build_parts(config: ServerConfig) -> RunningParts:
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    tokens = TokenRegistry.load(config.tokens_file, config.tokens_inline)
    state_keys = StateKeys.load(config.state_key_file) if config.state_key_file else None
    if tokens.enabled and state_keys is None:
        raise StateKeyError(
            "with --tokens-file, checkpoints must be signed: give --state-key-file (or "
            "PARAMSCHED_STATE_KEY_FILE), a JSON file {\"keys\": [{\"id\": \"k1\", "
            "\"secret\": \"<32+ random characters>\"}]}; see deploy/DEPLOYING.md")
    credentials = server_credentials(config)
    metrics = Metrics()
    store = open_store(config.redis_url, data_dir,
                       redis_wait_replicas=config.redis_wait_replicas,
                       redis_wait_timeout=config.redis_wait_timeout)
    service = SchedulerService(InstrumentedStore(store, metrics),
                               default_plan_size=config.plan_size, events=metrics,
                               state_keys=state_keys, auth_enabled=tokens.enabled,
                               max_values_cells=config.max_values_cells
                               or config.max_message_bytes // 16,
                               cache_bytes=config.cache_bytes,
                               compute_workers=config.compute_workers,
                               max_compute_waiting=config.max_compute_waiting,
                               commit_delay=config.commit_delay)
    # One interceptor: count every RPC, refuse unusable raw bytes, then authenticate.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        ServiceInterceptor(metrics, config.max_message_bytes, tokens)]
    if not tokens.enabled and not is_loopback(config.host):
        log.warning("serving on %s WITHOUT authentication: anyone who can reach this address "
                    "can read and change every job; set --tokens-file", config.host)
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", 4 * config.max_message_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ])
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    readiness = asyncio.get_running_loop().create_task(
        watch_readiness(service, health_servicer))
    sweeper = (asyncio.get_running_loop().create_task(
        expire_finished_jobs(service, config.retention_seconds))
        if config.retention_seconds > 0 else None)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{config.host}]:{config.port}" if ":" in config.host else (
        f"{config.host}:{config.port}")
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not bind {address}")
    metrics_http = None
    if config.metrics_port is not None:
        metrics_http = metrics.serve(config.metrics_port, config.metrics_host)
    web = None
    if config.http_port is not None:  # the dashboard, on the same service, tokens and TLS
        context = (tls_context(config.tls_cert, config.tls_key, config.tls_client_ca)
                   if credentials is not None and config.tls_cert and config.tls_key else None)
        web = WebServer(service, tokens, host=config.host, port=config.http_port,
                        ssl_context=context)
        await web.start()
    return RunningParts(server, port, store, service, health_servicer, metrics, tokens,
                        metrics_http, web, readiness, sweeper)


async def expire_finished_jobs(service: SchedulerService, retention: float) -> None:
    """Delete finished jobs past their retention, every tenth of it (at most hourly);
    every replica may do it: the store deletes a job only if it is still finished."""
    period = min(max(retention / 10, 1.0), 3600.0)
    while True:
        await asyncio.sleep(period)
        try:
            await service.expire_finished(retention)
        except ServiceError as exc:  # the store is down: try again next period
            log.warning("expiring finished jobs failed: %s", exc)


async def watch_readiness(service: SchedulerService, health_servicer: health.aio.HealthServicer,
                          *, interval: float = 0.25, max_lag: float = 1.0) -> None:
    """Readiness follows the server's load: NOT_SERVING for the SchedulerService name
    while long computations queue past the budget or the event loop lags, so a load
    balancer sends new ranks elsewhere; liveness (``""``) stays SERVING (the process is
    fine, restarting it would only lose its caches)."""
    loop = asyncio.get_running_loop()
    ready = True
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        lag = loop.time() - started - interval
        now_ready = not service.overloaded() and lag < max_lag
        if now_ready != ready:
            ready = now_ready
            await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING
                                      if ready else health_pb2.HealthCheckResponse.NOT_SERVING)
            if ready:
                log.info("ready again: the compute queue drained")
            else:
                log.warning("not ready: %d long computations wait (budget %d), event loop "
                            "lag %.2f s", service.compute_waiting, service.max_compute_waiting,
                            lag)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT; then finish in-flight RPCs and exit."""
    # Long computations run in worker threads: hand the GIL back to the event loop
    # (reports, health) every millisecond instead of every 5.
    sys.setswitchinterval(0.001)
    parts = await build_parts(config)
    await parts.server.start()
    where = "redis " + _redact(config.redis_url) if config.redis_url else (
        f"embedded store in {Path(config.data_dir) if config.data_dir else default_data_dir()}")
    security = ("TLS" + (" with client certificates" if config.tls_client_ca else "")
                if config.tls_cert else "plaintext")
    auth = "bearer tokens" if parts.tokens.enabled else "no auth"
    log.info("paramsched listening on %s:%d (%s; %s, %s)", config.host, parts.port, where,
             security, auth)
    announce(config, parts.port)
    if parts.metrics_http is not None:
        log.info("metrics on http://%s:%d/metrics", config.metrics_host,
                 parts.metrics_http.server_port)
    if parts.web is not None:
        log.info("dashboard on %s://%s:%d/", parts.web.scheme, config.host, parts.web.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests (grace %.0fs)", config.grace_seconds)
    for name in ("", SERVICE_NAME):
        await parts.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await parts.close(config.grace_seconds)
    log.info("stopped")


def _redact(url: str | None) -> str:
    """Hide a password in a Redis URL before logging it."""
    if url and "?" in url:  # a sentinel URL's sentinel_password travels in the query
        url = url.split("?", 1)[0] + "?***"
    if not url or "@" not in url:
        return url or ""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def client_target(host: str, port: int) -> str:
    """The address a client on this machine reaches the server at."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def announce(config: ServerConfig, port: int) -> None:
    """Say where clients find the server: ``--address-file`` gets ``HOST:PORT`` (written
    whole, then renamed into place, so a reader never sees half of it); a port picked
    by the OS (``--port 0``) is printed as a line for the shell."""
    target = client_target(config.host, port)
    if config.address_file:
        path = Path(config.address_file)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(target + "\n")
        tmp.replace(path)
    if config.port == 0:
        print(f"export PARAMSCHED_TARGET={target}", flush=True)


def make_parser() -> argparse.ArgumentParser:
    """The parser of ``paramsched serve`` (``paramsched.cli`` hands ``serve`` here)."""
    import paramsched

    version = f"paramsched {paramsched.__version__}"
    parser = argparse.ArgumentParser(prog="paramsched", description="The paramsched server.")
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the scheduler server", description=(
        "Run the paramsched server: the embedded durable store by default, Redis with "
        "--redis-url. Every flag has a PARAMSCHED_<FLAG> environment variable; a flag "
        "on the command line wins."))
    serve_p.add_argument("--version", action="version", version=version)
    serve_p.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                         help="address to bind (env PARAMSCHED_HOST; default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, default=int(_env("PORT", "50051") or 50051),
                         help="port to bind, 0 picks a free one (env PARAMSCHED_PORT)")
    serve_p.add_argument("--redis-url", default=_env("REDIS_URL"),
                         help="Redis URL; without it the embedded store is used "
                              "(env PARAMSCHED_REDIS_URL)")
    serve_p.add_argument("--redis-wait-replicas", type=int,
                         default=int(_env("REDIS_WAIT_REPLICAS") or -1),
                         help="replicas that must confirm each write (Redis WAIT) before it is "
                              "acknowledged (env PARAMSCHED_REDIS_WAIT_REPLICAS; default 1 "
                              "when the master has replicas, else 0)")
    serve_p.add_argument("--redis-wait-timeout", type=float,
                         default=float(_env("REDIS_WAIT_TIMEOUT") or 1.0),
                         help="seconds to wait for them; unconfirmed writes answer "
                              "UNAVAILABLE (env PARAMSCHED_REDIS_WAIT_TIMEOUT; default 1)")
    serve_p.add_argument("--data-dir", default=_env("DATA_DIR"),
                         help="embedded store folder (env PARAMSCHED_DATA_DIR; default "
                              f"{default_data_dir()})")
    serve_p.add_argument("--plan-size", type=int, default=int(_env("PLAN_SIZE", "256") or 256),
                         help="iterations of values handed out per report (default 256)")
    serve_p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"),
                         help="DEBUG, INFO, WARNING... (env PARAMSCHED_LOG_LEVEL)")
    serve_p.add_argument("--log-format", choices=("text", "json"),
                         default=_env("LOG_FORMAT", "text"),
                         help="one JSON object per line with 'json' (env PARAMSCHED_LOG_FORMAT)")
    serve_p.add_argument("--tokens-file", default=_env("TOKENS_FILE"),
                         help="JSON bearer-token file; the env PARAMSCHED_TOKENS may hold the "
                              "document itself (env PARAMSCHED_TOKENS_FILE)")
    serve_p.add_argument("--tls-cert", default=_env("TLS_CERT"),
                         help="PEM certificate chain (env PARAMSCHED_TLS_CERT)")
    serve_p.add_argument("--tls-key", default=_env("TLS_KEY"),
                         help="PEM private key (env PARAMSCHED_TLS_KEY)")
    serve_p.add_argument("--tls-client-ca", default=_env("TLS_CLIENT_CA"),
                         help="PEM CA bundle; clients must present a certificate signed by it "
                              "(mutual TLS; env PARAMSCHED_TLS_CLIENT_CA)")
    serve_p.add_argument("--metrics-port", type=int,
                         default=int(_env("METRICS_PORT") or -1),
                         help="serve Prometheus metrics on this port (env PARAMSCHED_METRICS_PORT)")
    serve_p.add_argument("--metrics-host", default=_env("METRICS_HOST", "127.0.0.1"),
                         help="address of the metrics endpoint (env PARAMSCHED_METRICS_HOST; "
                              "default 127.0.0.1, give 0.0.0.0 for a scraper elsewhere)")
    serve_p.add_argument("--state-key-file", default=_env("STATE_KEY_FILE"),
                         help="JSON file of HMAC keys that sign checkpoint states; required "
                              "with --tokens-file (env PARAMSCHED_STATE_KEY_FILE)")
    serve_p.add_argument("--http-port", type=int, default=int(_env("HTTP_PORT") or -1),
                         help="serve the web dashboard and its JSON API on this port, 0 "
                              "picks a free one (env PARAMSCHED_HTTP_PORT; default off)")
    serve_p.add_argument("--max-values-cells", type=_at_least_one,
                         default=_env("MAX_VALUES_CELLS"), metavar="N",
                         help="cost budget of one GetValues / PreviewSchedule page: values "
                              "returned (iterations x groups x params) plus iterations "
                              "replayed; larger requests are paged (env "
                              "PARAMSCHED_MAX_VALUES_CELLS; default 262144, 2 MiB of values)")
    serve_p.add_argument("--cache-bytes", type=_at_least_one,
                         default=int(_env("CACHE_BYTES") or 256 * 1024 * 1024), metavar="N",
                         help="memory budget of the job cache in bytes; a job evicted from it "
                              "loads again from its stored keyframe (env "
                              "PARAMSCHED_CACHE_BYTES; default 268435456, 256 MiB)")
    serve_p.add_argument("--retention", type=duration,
                         default=_env("RETENTION") or "30d", metavar="DURATION",
                         help="delete a finished job (and its keyframes; its audit trail "
                              "stays) this long after a rank reported its end: seconds, or "
                              "with a unit s/m/h/d; 0 keeps jobs forever (env "
                              "PARAMSCHED_RETENTION; default 30d)")
    serve_p.add_argument("--compute-workers", type=_at_least_one,
                         default=int(_env("COMPUTE_WORKERS") or 2), metavar="N",
                         help="worker threads for long computations (replays, previews); "
                              "the server reports not ready while more than 64 wait (env "
                              "PARAMSCHED_COMPUTE_WORKERS; default 2)")
    serve_p.add_argument("--commit-delay", type=commit_delay,
                         default=_env("COMMIT_DELAY") or "1ms",
                         metavar="DURATION",
                         help="reports of a job that waited for its store write go out "
                              "together once every rank is in, or this long after the "
                              "first (at most 1s; 0: at once; env PARAMSCHED_COMMIT_DELAY; "
                              "default 1ms)")
    serve_p.add_argument("--address-file", default=_env("ADDRESS_FILE"), metavar="PATH",
                         help="write HOST:PORT there once listening, e.g. with --port 0 "
                              "(env PARAMSCHED_ADDRESS_FILE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    configure_logging(str(getattr(args, "log_level", "INFO")),
                      str(getattr(args, "log_format", "text")))
    if args.command == "serve":
        config = ServerConfig(
            host=args.host, port=args.port, redis_url=args.redis_url, data_dir=args.data_dir,
            redis_wait_replicas=(None if args.redis_wait_replicas < 0
                                 else args.redis_wait_replicas),
            redis_wait_timeout=args.redis_wait_timeout,
            plan_size=args.plan_size, tokens_file=args.tokens_file,
            tokens_inline=os.environ.get("PARAMSCHED_TOKENS"), tls_cert=args.tls_cert,
            tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
            metrics_port=None if args.metrics_port < 0 else args.metrics_port,
            metrics_host=args.metrics_host, state_key_file=args.state_key_file,
            address_file=args.address_file,
            max_values_cells=args.max_values_cells, cache_bytes=args.cache_bytes,
            compute_workers=args.compute_workers, retention_seconds=args.retention,
            commit_delay=args.commit_delay,
            http_port=None if args.http_port < 0 else args.http_port)
        try:
            asyncio.run(serve(config))
        except (OSError, AuthConfigError, StateKeyError, StoreConfigError) as exc:
            log.error("cannot start: %s", exc)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
