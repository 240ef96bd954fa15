import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).parent))

# A server started without --data-dir (in process or as a child process) uses
# $XDG_DATA_HOME/paramsched: point it at a throwaway folder, so no test reads or leaves
# jobs in the user's own store, and no run sees the jobs of an earlier one.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="paramsched-tests-")


# --- store fixtures: a real redis-server per session, every JobStore per test --------
import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis

from paramsched.server.store import EmbeddedJobStore, JobStore, RedisJobStore

from redis_harness import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server (AOF, appendfsync always) shared by the session."""
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis"))
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, emptied (and restarted/resumed if a test left it down)."""
    redis_server.resume()
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def store_loop() -> Iterator[asyncio.Runner]:
    """One event loop per test: stores are opened, used and closed on it."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(params=["embedded", "redis"])
def open_job_store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, store_loop: asyncio.Runner
) -> Iterator[Callable[[], JobStore]]:
    """Opens stores of one kind on ONE backend (like several server processes would).

    Every store it opened is closed after the test, on the test's event loop.
    """
    opened: list[JobStore] = []
    if request.param == "embedded":
        data_dir = tmp_path / "store"

        def open_store() -> JobStore:
            opened.append(EmbeddedJobStore(data_dir))
            return opened[-1]
    else:
        url = request.getfixturevalue("redis_url")

        def open_store() -> JobStore:
            opened.append(RedisJobStore(url))
            return opened[-1]

    yield open_store
    for store in opened:
        store_loop.run(store.close())


@pytest.fixture
def job_store(open_job_store: Callable[[], JobStore]) -> JobStore:
    """A fresh, empty store of each kind (ids "embedded" and "redis")."""
    return open_job_store()
