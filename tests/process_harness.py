"""``paramsched serve`` as a real subprocess, started the way a user (or the container)
starts it, for tests that kill, restart or run several servers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PARAMSCHED = Path(sys.executable).parent / "paramsched"
LISTENING = re.compile(r"listening on (\S+):(\d+)")


class ServerProcess:
    """One ``paramsched serve`` process; the port is read from its log line."""

    def __init__(self, *, data_dir: Path | None = None, redis_url: str | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None,
                 port: int = 0) -> None:
        self.command = [str(PARAMSCHED), "serve", "--port", str(port)]
        if data_dir is not None:
            self.command += ["--data-dir", str(data_dir)]
        if redis_url is not None:
            self.command += ["--redis-url", redis_url]
        self.command += args or []
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: list[str] = []

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                match = LISTENING.search(line)
                if match and not found.is_set():
                    self.port = int(match.group(2))
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("paramsched serve did not start:\n" + "".join(self.log))
        self.wait_healthy(deadline - time.monotonic())
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    address = target

    def restart(self, timeout: float = 30.0) -> ServerProcess:
        """Start again on the same port and data dir (after ``kill`` or ``stop``): the
        port may take a moment to be free again."""
        self.stop()
        self.command[self.command.index("--port") + 1] = str(self.port)
        self.log.clear()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.start(timeout=max(1.0, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_healthy(self, timeout: float = 10.0) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=max(timeout, 1.0),
                               wait_for_ready=True)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait: returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
