"""paramsched: authoritative hyperparameter schedules for distributed training jobs.

``from paramsched import Client`` is the user's entry point. The client is imported
lazily so that the server (which never imports torch) can share this namespace.
"""

from typing import Any

__all__ = ["Client", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Client":
        from paramsched.client import Client

        return Client
    raise AttributeError(f"module 'paramsched' has no attribute {name!r}")
