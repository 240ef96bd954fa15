"""A real Redis Sentinel deployment for tests: one master, one replica, three sentinels.

All are ``redis-server`` processes on free loopback ports in a temp dir (a sentinel is
``redis-server sentinel.conf --sentinel``). ``kill_master()`` SIGKILLs the current
master and ``wait_for_failover()`` returns once the sentinels name another one.
Timings are short (``down-after-milliseconds`` 1000) so a failover takes a few seconds.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from redis_harness import RedisServer, _free_port

__all__ = ["SentinelDeployment"]

SERVICE = "paramsched"


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """One inline command on a loopback port; the raw reply (b"" on failure)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(" ".join(args).encode() + b"\r\n")
            return sock.recv(4096)
    except OSError:
        return b""


class SentinelDeployment:
    """A master, a replica of it and three sentinels monitoring ``SERVICE``."""

    def __init__(self, *, down_after_ms: int = 1000, start_timeout: float = 30.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="paramsched-sentinel-"))
        self.master = RedisServer(data_dir=self.dir / "a", extra_args=["--appendfsync",
                                                                      "everysec"])
        self.replica = RedisServer(
            data_dir=self.dir / "b",
            extra_args=["--appendfsync", "everysec", "--replicaof", "127.0.0.1",
                        str(self.master.port)])
        self.servers = [self.master, self.replica]
        self.sentinel_ports = [_free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        for i, port in enumerate(self.sentinel_ports):
            conf = self.dir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n")
            with open(self.dir / f"sentinel-{i}.log", "ab") as log:
                self.sentinels.append(subprocess.Popen(
                    [self.master.executable, str(conf), "--sentinel"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.dir))
        deadline = time.monotonic() + start_timeout
        while not (self._replica_synced() and all(
                self._sentinel_knows_replica(p) for p in self.sentinel_ports)):
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("sentinel deployment did not come up")
            time.sleep(0.1)

    def _replica_synced(self) -> bool:
        return b"master_link_status:up" in _command(self.replica.port, "INFO", "replication")

    def _sentinel_knows_replica(self, port: int) -> bool:
        reply = _command(port, "SENTINEL", "replicas", SERVICE)
        return str(self.replica.port).encode() in reply

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            reply = _command(port, "SENTINEL", "get-master-addr-by-name", SERVICE)
            parts = reply.split(b"\r\n")
            if len(parts) >= 5:
                return int(parts[4])
        raise RuntimeError("no sentinel answers")

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; returns it (``start()`` brings it back)."""
        master = self.server(self.master_port())
        master.kill()
        return master

    def wait_for_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels name a master other than ``old_port``; its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.master_port()
            if port != old_port and b"role:master" in _command(port, "INFO", "replication"):
                return port
            time.sleep(0.1)
        raise RuntimeError(f"no failover away from port {old_port} within {timeout} s")

    def close(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.kill()
                process.wait()
        for server in self.servers:
            server.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelDeployment:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
