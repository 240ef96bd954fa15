"""Server factory and the ``paramsched`` command line.

``paramsched serve`` alone runs a durable single-node server on the embedded store
(a sqlite file under ``--data-dir``); ``--redis-url`` makes Redis the authority, and
then any number of server processes can serve the same jobs.

Every flag can also be set by an environment variable (``PARAMSCHED_<FLAG>``, e.g.
``PARAMSCHED_REDIS_URL``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from paramsched.api.v1 import scheduler_pb2, scheduler_pb2_grpc

from .grpc.servicer import SchedulerServicer
from .service import SchedulerService
from .store import JobStore, open_store

log = logging.getLogger("paramsched.server")

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
    data_dir: str | Path | None = None
    plan_size: int = 256
    grace_seconds: float = 10.0


@dataclass
class RunningParts:
    """What ``build_server`` made, for tests and ``serve``."""

    server: grpc.aio.Server
    port: int
    store: JobStore
    service: SchedulerService
    health: health.aio.HealthServicer


async def build_server(config: ServerConfig) -> tuple[grpc.aio.Server, int]:
    """An unstarted grpc.aio server bound to ``config.host:config.port`` (0: any free)."""
    parts = await build_parts(config)
    return parts.server, parts.port


async def build_parts(config: ServerConfig) -> RunningParts:
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    store = open_store(config.redis_url, data_dir)
    service = SchedulerService(store, default_plan_size=config.plan_size)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ])
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{config.host}]:{config.port}" if ":" in config.host else (
        f"{config.host}:{config.port}")
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return RunningParts(server, port, store, service, health_servicer)


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT; then finish in-flight RPCs and exit."""
    parts = await build_parts(config)
    await parts.server.start()
    where = "redis " + _redact(config.redis_url) if config.redis_url else (
        f"embedded store in {Path(config.data_dir) if config.data_dir else default_data_dir()}")
    log.info("paramsched listening on %s:%d (%s)", config.host, parts.port, where)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests (grace %.0fs)", config.grace_seconds)
    for name in ("", SERVICE_NAME):
        await parts.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await parts.server.stop(config.grace_seconds)
    await parts.store.close()
    log.info("stopped")


def _redact(url: str | None) -> str:
    """Hide a password in a Redis URL before logging it."""
    if not url or "@" not in url:
        return url or ""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PARAMSCHED_{name}", default)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paramsched", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the scheduler server")
    serve_p.add_argument("--host", default=_env("HOST", "127.0.0.1"),
                         help="address to bind (env PARAMSCHED_HOST; default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, default=int(_env("PORT", "50051") or 50051),
                         help="port to bind, 0 picks a free one (env PARAMSCHED_PORT)")
    serve_p.add_argument("--redis-url", default=_env("REDIS_URL"),
                         help="Redis URL; without it the embedded store is used "
                              "(env PARAMSCHED_REDIS_URL)")
    serve_p.add_argument("--data-dir", default=_env("DATA_DIR"),
                         help="embedded store folder (env PARAMSCHED_DATA_DIR; default "
                              f"{default_data_dir()})")
    serve_p.add_argument("--plan-size", type=int, default=int(_env("PLAN_SIZE", "256") or 256),
                         help="iterations of values handed out per report (default 256)")
    serve_p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"),
                         help="DEBUG, INFO, WARNING... (env PARAMSCHED_LOG_LEVEL)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        config = ServerConfig(host=args.host, port=args.port, redis_url=args.redis_url,
                              data_dir=args.data_dir, plan_size=args.plan_size)
        try:
            asyncio.run(serve(config))
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
