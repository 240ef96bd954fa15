"""Which rank of how many this process is.

Explicit arguments win; then an initialised ``torch.distributed`` process group (the
truth for DDP/FSDP jobs); then the ``RANK`` / ``WORLD_SIZE`` variables that torchrun
and most launchers export; then a single process (0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch.distributed as dist


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def resolve_rank(
    rank: int | None = None,
    world_size: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """``(rank, world_size)`` from the first source that knows, checked for sense."""
    env = os.environ if env is None else env
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            auto_rank, auto_world = dist.get_rank(), dist.get_world_size()
        else:
            env_rank, env_world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
            auto_rank = 0 if env_rank is None else env_rank
            auto_world = 1 if env_world is None else env_world
        rank = auto_rank if rank is None else rank
        world_size = auto_world if world_size is None else world_size
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return int(rank), int(world_size)
