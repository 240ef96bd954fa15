"""Where jobs live: the ``JobStore`` contract and its two implementations.

``EmbeddedJobStore`` (a sqlite3 file) is the default, so a single ``paramsched serve``
is durable with no other service; ``RedisJobStore`` lets several server replicas share
the same jobs. ``open_store`` picks one from the server's configuration.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    ChangeConflict,
    IncarnationMismatch,
    JobNotFound,
    JobRecord,
    JobState,
    JobStore,
    Keyframe,
    RankOutOfRange,
    Reported,
    StaleGeneration,
    StoreError,
    StoreUnavailable,
    TooEarly,
    WorldSizeConflict,
    canonical_json,
    content_hash,
)
from .embedded import EmbeddedJobStore
from .redis_store import RedisJobStore

__all__ = [
    "ChangeConflict",
    "EmbeddedJobStore",
    "IncarnationMismatch",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "JobStore",
    "Keyframe",
    "RankOutOfRange",
    "RedisJobStore",
    "Reported",
    "StaleGeneration",
    "StoreError",
    "StoreUnavailable",
    "TooEarly",
    "WorldSizeConflict",
    "canonical_json",
    "content_hash",
    "open_store",
]


def open_store(redis_url: str | None, data_dir: str | Path, *,
               redis_wait_replicas: int | None = None,
               redis_wait_timeout: float = 1.0) -> JobStore:
    """The Redis store when a URL is given, else the embedded store in ``data_dir``.

    ``redis_wait_replicas``/``redis_wait_timeout``: the replicas each write waits for
    (``RedisJobStore``'s ``wait_replicas``; None: 1 when the master has replicas)."""
    if redis_url:
        return RedisJobStore(redis_url, wait_replicas=redis_wait_replicas,
                             wait_timeout=redis_wait_timeout)
    return EmbeddedJobStore(data_dir)
