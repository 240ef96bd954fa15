"""The paramsched client: attach a torch optimizer to a job on a paramsched server.

```python
from paramsched import Client

client = Client("127.0.0.1:50051")
handle = client.attach(optimizer, "job-42", param_scheduler=[...], epoch_length=100,
                       max_epochs=12)
```

Without torch, ``Client`` is the admin API (``list_jobs``, ``get_job``, ``history``,
``set``, ``decay``, ``extend``... see ``paramsched.client.admin``); torch is imported by
the first ``attach``. This package talks to the server through the generated API only;
it never imports server code (the server image carries no torch, the client needs no Redis).
"""

import importlib
from typing import TYPE_CHECKING, Any

from .admin import Change, JobFinishedError
from .client import Client
from .errors import (
    AttachError,
    DecisionRequiredError,
    EpochError,
    InvalidArgumentError,
    JobNotFoundError,
    JobReplacedError,
    JobSpecMismatchError,
    ParamschedError,
    PermissionDeniedError,
    ResumeRequiredError,
    ScheduleUnavailableError,
    StaleGenerationError,
)
from .results import AuditEntry, ChangeResult, JobInfo, RankProgress, Values

if TYPE_CHECKING:
    from .handle import ScheduleHandle
    from .ranks import resolve_rank

#: names of the torch layer, imported on first use: the rest runs without torch.
_TORCH_LAYER = {"ScheduleHandle": ".handle", "resolve_rank": ".ranks"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_LAYER:
        value = getattr(importlib.import_module(_TORCH_LAYER[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AttachError",
    "AuditEntry",
    "Change",
    "ChangeResult",
    "Client",
    "DecisionRequiredError",
    "EpochError",
    "InvalidArgumentError",
    "JobFinishedError",
    "JobInfo",
    "JobNotFoundError",
    "JobReplacedError",
    "JobSpecMismatchError",
    "ParamschedError",
    "PermissionDeniedError",
    "RankProgress",
    "ResumeRequiredError",
    "ScheduleHandle",
    "ScheduleUnavailableError",
    "StaleGenerationError",
    "Values",
    "resolve_rank",
]
