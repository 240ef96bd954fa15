"""Which run this process belongs to.

A *run* is one launch of the training program, all its ranks. The server gives each
run its own generation of a job, so a crashed launch's stragglers are fenced when the
next launch resumes, and a second launch resuming from the same checkpoint is told
apart from a rank of the first one loading it late.

Where the id comes from, first match wins:

1. an initialised ``torch.distributed`` process group: rank 0's id (its explicit
   ``run_id``, ``PARAMSCHED_RUN_ID`` or a fresh one) is shared through the group's
   default store, so every rank of the launch agrees without configuration;
2. ``attach(..., run_id=...)``, then the ``PARAMSCHED_RUN_ID`` environment variable
   (set it per launch, e.g. from the scheduler's job and attempt ids);
3. a single process (``world_size == 1``): an id made once per process;
4. otherwise attach fails naming ``run_id``: ranks that cannot agree would be taken
   for different launches.

torchrun's ``--rdzv-id`` is not a run id: it defaults to "none" and is the same for
every restart of a job.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping

import torch.distributed as dist

ENV_VAR = "PARAMSCHED_RUN_ID"
_STORE_KEY = "paramsched/run_id"
_lock = threading.Lock()
_process_run_id: str | None = None
_group_run_ids: dict[int, str] = {}


def process_run_id() -> str:
    """One id per process, made on first use."""
    global _process_run_id
    with _lock:
        if _process_run_id is None:
            _process_run_id = uuid.uuid4().hex
        return _process_run_id


def _check(run_id: str, where: str) -> str:
    if not isinstance(run_id, str) or not run_id or len(run_id) > 128 or not all(
            c.isalnum() or c in "._:-" for c in run_id):
        raise ValueError(f"{where} must be 1-128 letters, digits, '.', '_', ':' or '-', "
                         f"got {run_id!r}")
    return run_id


def _agreed(candidate: str) -> str:
    """Rank 0's id, shared through the default process group's store."""
    store = dist.distributed_c10d._get_default_store()
    key = id(store)
    with _lock:
        if key in _group_run_ids:
            return _group_run_ids[key]
    if dist.get_rank() == 0:
        store.set(_STORE_KEY, candidate)
        agreed = candidate
    else:
        agreed = store.get(_STORE_KEY).decode()  # waits until rank 0 has set it
    with _lock:
        return _group_run_ids.setdefault(key, agreed)


def resolve_run_id(run_id: str | None, world_size: int,
                   env: Mapping[str, str] | None = None) -> str:
    """This process's run id; see the module docstring for the order."""
    env = os.environ if env is None else env
    explicit = _check(run_id, "run_id") if run_id is not None else None
    from_env = _check(env[ENV_VAR], ENV_VAR) if env.get(ENV_VAR) else None
    if dist.is_available() and dist.is_initialized():
        return _agreed(explicit or from_env or uuid.uuid4().hex)
    if explicit or from_env:
        return str(explicit or from_env)
    if world_size == 1:
        return process_run_id()
    raise ValueError(
        f"run_id: this process is one of {world_size} ranks and no torch.distributed "
        f"process group is initialised, so its ranks cannot agree on a run id; pass "
        f"attach(..., run_id=...) or set {ENV_VAR} to the same value on every rank of "
        "this launch (and a new value for the next launch)")
