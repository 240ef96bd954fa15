"""The server interceptor: per-RPC metrics, raw request checks and bearer-token auth,
in one chain.

It wraps the SchedulerService's unary handlers; the health and reflection services
stay open (probes carry no token) and are not counted.

Authorization needs the request's ``job_id``, which the interceptor only sees after
deserialization, so it wraps the handler's behaviour rather than deciding from the
method name alone. A job outside a token's scope is PERMISSION_DENIED before the
store is touched, so the answer is the same whether the job exists or not.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..auth import Principal, TokenRegistry, bearer_token, current_principal
from ..observability import Metrics

SERVICE_PREFIX = "/paramsched.api.v1.SchedulerService/"

# What each method needs: "scoped" (the request's job_id in the token's scope),
# "admin", or "any" authenticated caller.
METHOD_RULES = {
    "AttachJob": "scoped",
    "GetJob": "scoped",
    "ReportProgress": "scoped",
    "GetValues": "scoped",
    "GetState": "scoped",
    "LoadState": "scoped",
    "GetJobHistory": "scoped",
    "DeleteJob": "admin",
    "RescheduleJob": "admin",
    "ListJobs": "any",
    "PreviewSchedule": "any",
}

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """The one interceptor of the SchedulerService's unary methods: it counts every RPC,
    refuses unusable raw bytes (oversized, not a message) before anything reads the
    request, then authenticates (which reads ``job_id``). Each method's wrapped handler
    is built once and reused: nothing in it depends on the call but the call itself."""

    def __init__(self, metrics: Metrics, max_message_bytes: int,
                 tokens: TokenRegistry | None = None) -> None:
        self.metrics = metrics
        self.limit = max_message_bytes
        self.tokens = tokens if tokens is not None and tokens.enabled else None
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Any,
                                details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        if not method.startswith(SERVICE_PREFIX):
            return await continuation(details)  # health, reflection: open, not counted
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None or not handler.unary_unary:
            return handler
        name = method[len(SERVICE_PREFIX):]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrapped(name, handler.unary_unary),
            request_deserializer=self._deserializer(name, handler.request_deserializer),
            response_serializer=handler.response_serializer)
        self._handlers[method] = wrapped
        return wrapped

    # -- raw request checks ------------------------------------------------------------
    def _deserializer(self, name: str, parse: Any) -> Callable[[bytes], Any]:
        """gRPC's own ``max_receive_message_length`` (set higher, as a backstop) would
        answer RESOURCE_EXHAUSTED without naming the limit, and a parse error would
        surface as UNKNOWN: both become INVALID_ARGUMENT saying so."""
        limit = self.limit

        def deserialize(data: bytes) -> Any:
            if len(data) > limit:
                return _Refused(f"request of {len(data)} bytes exceeds the limit "
                                f"max_message_bytes={limit}")
            try:
                return parse(data)
            except DecodeError as exc:
                return _Refused(f"request is not a valid {name}Request message: {exc}")

        return deserialize

    # -- the chain: metrics, raw checks, authentication ------------------------------------
    def _wrapped(self, name: str, behavior: Behavior) -> Behavior:
        """``behavior`` counted (latency, status code), behind the raw request checks and
        (with tokens) authentication, in ONE coroutine: a layer per concern would cost
        every RPC a coroutine each, on the event loop that serves them all. The metric
        children are looked up once per method (prometheus' ``labels()`` hashes and
        locks on every call), a status code's on its first use."""
        latency = self.metrics.rpc_latency.labels(name)
        rpcs = self.metrics.rpcs
        by_code: dict[Any, Any] = {}

        def counter(code: Any) -> Any:
            child = by_code.get(code)
            if child is None:
                child = by_code[code] = rpcs.labels(
                    name, code.name if hasattr(code, "name") else str(code))
            return child

        ok = grpc.StatusCode.OK
        clock = time.perf_counter
        tokens = self.tokens
        rule = METHOD_RULES.get(name, "admin")  # a method without a rule is admin-only

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = clock()
            try:
                if isinstance(request, _Refused):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                if tokens is None:
                    result = await behavior(request, context)
                else:
                    result = await _authorized(tokens, rule, behavior, request, context)
            except BaseException:
                latency.observe(clock() - start)
                counter(context.code() or grpc.StatusCode.UNKNOWN).inc()
                raise
            latency.observe(clock() - start)
            counter(ok).inc()
            return result

        return handle


async def _authorized(tokens: TokenRegistry, rule: str, behavior: Behavior, request: Any,
                      context: grpc.aio.ServicerContext) -> Any:
    """``behavior`` as the request's authenticated principal, or the call aborted."""
    metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    principal = _authorize(tokens, bearer_token(metadata), rule, request)
    if isinstance(principal, tuple):
        await context.abort(*principal)
    assert isinstance(principal, Principal)
    reset = current_principal.set(principal)
    try:
        return await behavior(request, context)
    finally:
        current_principal.reset(reset)


def _authorize(tokens: TokenRegistry, token: str | None, rule: str,
               request: Any) -> Principal | tuple[grpc.StatusCode, str]:
    if token is None:
        return (grpc.StatusCode.UNAUTHENTICATED,
                "missing bearer token (metadata 'authorization: Bearer <token>')")
    principal = tokens.authenticate(token)
    if principal is None:
        return grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token"
    if rule == "admin" and not principal.admin:
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"token {principal.name!r} is not an admin token")
    if rule == "scoped" and not principal.may_access(getattr(request, "job_id", "")):
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"token {principal.name!r} may not access job {request.job_id!r}")
    return principal


class _Refused:
    """A request refused before parsing; the reason goes back as INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
