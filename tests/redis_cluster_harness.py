"""A real 3-master Redis Cluster for tests, made of ``redis-server`` processes.

Each node is a ``RedisServer`` (free loopback port, own temp dir, AOF on) started with
``--cluster-enabled yes``; ``redis-cli --cluster create`` assigns the 16384 slots to
the three masters (no replicas), and the constructor returns once every node reports
``cluster_state:ok``. ``url`` is what ``paramsched serve --redis-url`` takes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from redis_harness import RedisServer

__all__ = ["RedisCluster"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node(port: int) -> redis.Redis:
    """A plain (non-cluster) client of one node, for admin commands."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0, decode_responses=True)


class RedisCluster:
    """``masters`` redis-server processes joined into one cluster, each with
    ``replicas`` replicas (default none)."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        data_dir: str | Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        cli = os.environ.get("PARAMSCHED_REDIS_CLI") or shutil.which("redis-cli")
        if not cli:
            raise RuntimeError("redis-cli is required to create a Redis Cluster "
                               "(`apt-get install redis-tools`)")  # fmt: skip
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="paramsched-cluster-"))
        self.nodes: list[RedisServer] = []
        try:
            self.replicas = replicas
            for i in range(masters * (1 + replicas)):
                node_dir = self.data_dir / f"node-{i}"
                node_dir.mkdir(parents=True, exist_ok=True)
                self.nodes.append(RedisServer(data_dir=node_dir, extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"),
                    # The bus port defaults to port + 10000, which may be taken or > 65535.
                    "--cluster-port", str(_free_port()),
                    "--cluster-node-timeout", "5000",
                    "--appendfsync", "everysec",
                ]))  # fmt: skip
            created = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=start_timeout,
            )  # fmt: skip
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}"
                                   f"{created.stderr}")  # fmt: skip
            self.wait_ok(start_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """A seed node in paramsched's cluster scheme; the client finds the others."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node, as a dict of strings."""
        with _node(port) as client:
            text = client.execute_command("CLUSTER INFO")
        if isinstance(text, dict):
            return {k: str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok``, with all slots and all masters."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [self.info(port) for port in self.ports]
            if all(
                i.get("cluster_state") == "ok"
                and i.get("cluster_slots_ok") == "16384"
                and i.get("cluster_known_nodes") == str(len(self.nodes))
                for i in infos
            ) and all(len(self.replicas_of(port)) == self.replicas
                      for port in self.master_ports()) and self._slots_list_replicas():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis Cluster not ok after {timeout}s: {infos}")
            time.sleep(0.05)

    def replication(self, port: int) -> dict[str, Any]:
        """``INFO replication`` of one node."""
        with _node(port) as client:
            return dict(client.info("replication"))

    def _slots_list_replicas(self) -> bool:
        """Whether CLUSTER SLOTS (what clients read) lists every shard's replicas yet:
        gossip makes a replica known there a little after it is in sync."""
        with _node(self.ports[0]) as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        return all(len(r) - 3 == self.replicas for r in ranges)

    def master_ports(self) -> list[int]:
        return [p for p in self.ports if self.replication(p).get("role") == "master"]

    def replicas_of(self, port: int) -> list[RedisServer]:
        """The replicas of the master on ``port`` that are connected and in sync."""
        info = self.replication(port)
        ports = {int(v["port"]) for k, v in info.items()
                 if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"}
        return [n for n in self.nodes if n.port in ports]

    def keys_by_master(self, pattern: str = "*") -> dict[int, list[str]]:
        """Each master's port -> the keys it holds that match ``pattern``, sorted."""
        found: dict[int, list[str]] = {}
        for port in self.ports:
            with _node(port) as client:
                found[port] = sorted(client.keys(pattern))  # type: ignore[arg-type]
        return found

    def keyslot(self, key: str) -> int:
        """The slot of ``key``, as the cluster itself computes it (CLUSTER KEYSLOT)."""
        with _node(self.ports[0]) as client:
            return int(client.execute_command("CLUSTER KEYSLOT", key))

    def flushall(self) -> None:
        """Empty every master (between tests)."""
        for port in self.ports:
            with _node(port) as client:
                client.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisCluster(ports={self.ports}, dir={str(self.data_dir)!r})"
