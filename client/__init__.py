"""The paramsched client: attach a torch optimizer to a job on a paramsched server.

```python
from paramsched import Client

client = Client("127.0.0.1:50051")
handle = client.attach(optimizer, "job-42", param_scheduler=[...], epoch_length=100,
                       max_epochs=12)
```

This package talks to the server through the generated API only; it never imports
server code (the server image carries no torch, the client needs no Redis).
"""

from .client import Client
from .errors import (
    AttachError,
    DecisionRequiredError,
    EpochError,
    InvalidArgumentError,
    JobNotFoundError,
    JobSpecMismatchError,
    ParamschedError,
    ScheduleUnavailableError,
    StaleGenerationError,
)
from .handle import ScheduleHandle
from .ranks import resolve_rank

__all__ = [
    "AttachError",
    "Client",
    "DecisionRequiredError",
    "EpochError",
    "InvalidArgumentError",
    "JobNotFoundError",
    "JobSpecMismatchError",
    "ParamschedError",
    "ScheduleHandle",
    "ScheduleUnavailableError",
    "StaleGenerationError",
    "resolve_rank",
]
