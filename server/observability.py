"""Prometheus metrics and structured logs.

Metrics live in a registry per server (tests run several servers in one process) and
are served over HTTP on ``--metrics-port``. The domain service reports what happens
through ``ServiceEvents``; the store is timed by wrapping it (``InstrumentedStore``);
RPCs are counted by the gRPC interceptor.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .store import JobRecord, JobStore, Keyframe, Reported
from .store.base import JsonObjects

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
ACTIVE_WINDOW_SECONDS = 300.0


class Metrics:
    """Every metric of one server process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter("paramsched_rpcs", "RPCs served, by method and status code",
                            ["method", "code"], registry=r)
        self.rpc_latency = Histogram("paramsched_rpc_duration_seconds", "RPC latency by method",
                                     ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.store_latency = Histogram("paramsched_store_duration_seconds",
                                       "Job store round trips by operation", ["operation"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.plan_refills = Counter("paramsched_plan_refills",
                                    "Plans handed out (each report or attach refills a rank)",
                                    registry=r)
        self.plan_iterations = Counter("paramsched_plan_iterations",
                                       "Iterations of values handed out in plans", registry=r)
        self.fenced_reports = Counter("paramsched_fenced_reports",
                                      "Reports refused for a stale generation", registry=r)
        self.active_jobs = Gauge("paramsched_active_jobs",
                                 "Jobs with a report to this server in the last 5 minutes",
                                 registry=r)
        self._last_report: dict[str, float] = {}
        self.active_jobs.set_function(self._count_active)

    def _count_active(self) -> float:
        cutoff = time.monotonic() - ACTIVE_WINDOW_SECONDS
        for job_id in [j for j, t in self._last_report.items() if t < cutoff]:
            del self._last_report[job_id]
        return float(len(self._last_report))

    # -- ServiceEvents --------------------------------------------------------------
    def plan_issued(self, job_id: str, iterations: int) -> None:
        self.plan_refills.inc()
        self.plan_iterations.inc(iterations)

    def job_reported(self, job_id: str) -> None:
        self._last_report[job_id] = time.monotonic()

    def report_fenced(self, job_id: str) -> None:
        self.fenced_reports.inc()

    def serve(self, port: int, host: str) -> Any:
        """Start the /metrics HTTP endpoint; returns the HTTP server (for shutdown)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class InstrumentedStore:
    """A JobStore that times every round trip into ``paramsched_store_duration_seconds``."""

    def __init__(self, inner: JobStore, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        # Each operation's histogram child, looked up once: ``labels()`` hashes and takes
        # a lock on every call, and a report pays this on the event loop.
        self._latency: dict[str, Any] = {}

    async def _timed(self, operation: str, coro: Any) -> Any:
        start = time.perf_counter()
        try:
            return await coro
        finally:
            self._observe(operation, start)

    def _observe(self, operation: str, start: float) -> None:
        child = self._latency.get(operation)
        if child is None:
            child = self._latency[operation] = self.metrics.store_latency.labels(operation)
        child.observe(time.perf_counter() - start)

    async def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        return await self._timed("create", self.inner.create(record))

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._timed("get", self.inner.get(job_id))

    async def list(self, prefix: str = "", after: str = "", limit: int = 100) -> list[JobRecord]:
        return await self._timed("list", self.inner.list(prefix, after, limit))

    async def delete(self, job_id: str, audit_entry: dict[str, Any] | None = None, *,
                     finished_before: float | None = None) -> bool:
        return await self._timed("delete", self.inner.delete(
            job_id, audit_entry, finished_before=finished_before))

    async def count(self, prefix: str = "", limit: int = 1000) -> int:
        return await self._timed("count", self.inner.count(prefix, limit))

    async def report(self, job_id: str, **kwargs: Any) -> Reported:
        # Timed inline, not through ``_timed``: one coroutine less on every report.
        start = time.perf_counter()
        try:
            return await self.inner.report(job_id, **kwargs)
        finally:
            self._observe("report", start)

    async def join(self, job_id: str, **kwargs: Any) -> tuple[JobRecord, str]:
        return await self._timed("join", self.inner.join(job_id, **kwargs))

    async def load_state(self, job_id: str, **kwargs: Any) -> tuple[JobRecord, bool]:
        return await self._timed("load_state", self.inner.load_state(job_id, **kwargs))

    async def reschedule(self, job_id: str, **kwargs: Any) -> JobRecord:
        return await self._timed("reschedule", self.inner.reschedule(job_id, **kwargs))

    async def append_audit(self, job_id: str, entry: dict[str, Any]) -> None:
        await self._timed("append_audit", self.inner.append_audit(job_id, entry))

    async def audit(self, job_id: str) -> JsonObjects:
        return await self._timed("audit", self.inner.audit(job_id))

    async def save_keyframe(self, job_id: str, keyframe: Keyframe) -> bool:
        return await self._timed("save_keyframe", self.inner.save_keyframe(job_id, keyframe))

    async def keyframe(self, job_id: str) -> Keyframe | None:
        return await self._timed("keyframe", self.inner.keyframe(job_id))

    async def close(self) -> None:
        await self.inner.close()


# Fields that event log lines carry when known (passed with ``extra=``).
EVENT_FIELDS = ("job_id", "rank", "generation", "principal", "event", "iteration")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the event fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines, with the event fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{n}={getattr(record, n)}" for n in EVENT_FIELDS if hasattr(record, n)]
        return f"{text} [{' '.join(fields)}]" if fields else text


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime
