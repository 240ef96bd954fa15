"""The jobs one server process holds parsed, within a count and a memory budget.

Only a cache: a job's values are a function of its stored record, and its stored
keyframe makes loading an evicted job again cost one keyframe read and a replay of at
most a plan, so a small budget costs little and there is no cliff at its size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from .views import LoadedJob


class JobCache:
    """Loaded jobs by id, least recently used first."""

    def __init__(self, max_jobs: int, max_bytes: int) -> None:
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, LoadedJob] = OrderedDict()
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, job_id: str) -> LoadedJob:
        return self._entries[job_id]

    @property
    def nbytes(self) -> int:
        """About the memory the cached jobs hold, as last counted."""
        return self._nbytes

    def get(self, job_id: str) -> LoadedJob | None:
        """The job's entry, if cached (its use is recorded by ``touch``)."""
        return self._entries.get(job_id)

    def touch(self, job_id: str) -> None:
        self._entries.move_to_end(job_id)

    def put(self, job_id: str, entry: LoadedJob) -> None:
        self.pop(job_id)
        entry.nbytes = entry.schedule.nbytes()
        self._entries[job_id] = entry
        self._nbytes += entry.nbytes
        self._evict()

    def pop(self, job_id: str) -> None:
        old = self._entries.pop(job_id, None)
        if old is not None:
            self._nbytes -= old.nbytes

    def recount(self, job_id: str, entry: LoadedJob) -> None:
        """Count ``entry`` again after its caches grew, and keep within the budget."""
        if self._entries.get(job_id) is not entry:
            return
        size = entry.schedule.nbytes()
        self._nbytes += size - entry.nbytes
        entry.nbytes = size
        self._evict()

    def _evict(self) -> None:
        # The newest job stays even alone over the budget: it is being answered.
        while len(self._entries) > self.max_jobs or (
                len(self._entries) > 1 and self._nbytes > self.max_bytes):
            _, dropped = self._entries.popitem(last=False)
            self._nbytes -= dropped.nbytes
