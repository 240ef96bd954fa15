"""The web dashboard (``paramsched serve --http-port``): jobs, curves, audit trails and
change previews in the browser, with its JSON API under ``/api/v1/`` (docs/WEB.md).

A front end beside the gRPC servicer, on the same ``SchedulerService``, tokens and TLS.
"""

from .changes import ChangeRequest, parse_change
from .server import STATUS, WebServer, tls_context

__all__ = ["STATUS", "ChangeRequest", "WebServer", "parse_change", "tls_context"]
