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
    JobStore,
    RankOutOfRange,
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
    "JobStore",
    "RankOutOfRange",
    "RedisJobStore",
    "StaleGeneration",
    "StoreError",
    "StoreUnavailable",
    "TooEarly",
    "WorldSizeConflict",
    "canonical_json",
    "content_hash",
    "open_store",
]


def open_store(redis_url: str | None, data_dir: str | Path) -> JobStore:
    """The Redis store when a URL is given, else the embedded store in ``data_dir``."""
    if redis_url:
        return RedisJobStore(redis_url)
    return EmbeddedJobStore(data_dir)
