"""A real ``redis-server`` for tests: started on a free loopback port in a temp dir.

Tests run against real Redis (the Lua scripts, AOF durability and failure modes are
what is under test), never a fake. The server can be stopped, killed, restarted on the
same port and dir (the AOF replays) and paused (SIGSTOP) to simulate a hung backend.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer"]

_INSTALL_HINT = (
    "redis-server is required by the test suite (tests run against a real Redis). "
    "Install it with `apt-get install redis-server` (or set PARAMSCHED_REDIS_SERVER "
    "to its path)."
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; ``start()`` is called by the constructor.

    ``extra_args`` are appended to the command line (and override earlier options),
    e.g. ``["--appendfsync", "everysec"]``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        executable: str | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        found = (
            executable or os.environ.get("PARAMSCHED_REDIS_SERVER") or shutil.which("redis-server")
        )
        if not found or not Path(found).exists():
            raise RuntimeError(_INSTALL_HINT)
        self.executable = found
        self.port = port if port is not None else _free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="paramsched-redis-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def command(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start (again) on the same port and dir; returns once it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir
            )
        self._paused = False
        deadline = time.monotonic() + self.start_timeout
        while not self.ping():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server did not answer PING within {self.start_timeout}s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the server answers PING with PONG (not LOADING, not silent)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful SHUTDOWN (the AOF is flushed); terminate/kill if it hangs."""
        if not self.running:
            return
        assert self.process is not None
        self.resume()
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock,
        ):
            sock.sendall(b"SHUTDOWN\r\n")
            sock.recv(64)  # the server closes the connection when it exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything not already fsync'ed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers."""
        if self.process is not None and self.running and not self._paused:
            self.process.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self.process is not None and self._paused:
            self.process.send_signal(signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Stop the server and remove the temp dir it created (not a given one)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"RedisServer(port={self.port}, dir={str(self.data_dir)!r}, {state})"
