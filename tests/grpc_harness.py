"""A real grpc.aio server in this process, on a free loopback port, for tests.

It runs on its own event loop in a background thread so tests can use plain
synchronous stubs, the way training code talks to the server.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from paramsched.api.v1 import scheduler_pb2_grpc
from paramsched.server.app import RunningParts, ServerConfig, build_parts


def write_state_keys(folder: Path, *ids: str) -> str:
    """A state key file with keys ``ids`` (default one key, "test-1"); returns its path."""
    keys = [{"id": key_id, "secret": f"{key_id}-secret-".ljust(40, "x")}
            for key_id in (ids or ("test-1",))]
    path = folder / "state-keys.json"
    path.write_text(json.dumps({"keys": keys}))
    return str(path)


class InProcessServer:
    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        redis_url: str | None = None,
        plan_size: int = 256,
        **config: Any,
    ) -> None:
        if (config.get("tokens_inline") or config.get("tokens_file")) and \
                "state_key_file" not in config:
            # A server with tokens needs a key that signs checkpoint states.
            config["state_key_file"] = write_state_keys(
                Path(tempfile.mkdtemp(prefix="paramsched-keys-")))
        if data_dir is None and redis_url is None:
            # Never the user's default data dir: every server starts on an empty store.
            data_dir = Path(tempfile.mkdtemp(prefix="paramsched-store-"))
        self.config = ServerConfig(
            host=config.pop("host", "127.0.0.1"), port=0, data_dir=data_dir,
            redis_url=redis_url, plan_size=plan_size, **config,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.parts: RunningParts | None = None

    def start(self) -> InProcessServer:
        self.thread.start()
        self.parts = self._call(self._start())
        return self

    async def _start(self) -> RunningParts:
        parts = await build_parts(self.config)
        await parts.server.start()
        return parts

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    @property
    def target(self) -> str:
        assert self.parts is not None
        return f"127.0.0.1:{self.parts.port}"

    def stop(self) -> None:
        if self.parts is not None:
            parts = self.parts
            self.parts = None

            self._call(parts.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextmanager
def serving(
    **kwargs: Any,
) -> Iterator[tuple[InProcessServer, scheduler_pb2_grpc.SchedulerServiceStub]]:
    server = InProcessServer(**kwargs).start()
    channel = grpc.insecure_channel(server.target)
    try:
        yield server, scheduler_pb2_grpc.SchedulerServiceStub(channel)
    finally:
        channel.close()
        server.stop()
