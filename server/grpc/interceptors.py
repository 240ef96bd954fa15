"""Server interceptors: bearer-token auth and per-RPC metrics.

Both wrap the SchedulerService's unary handlers; the health and reflection services
stay open (probes carry no token) and are not counted.

Authorization needs the request's ``job_id``, which the interceptor only sees after
deserialization, so it wraps the handler's behaviour rather than deciding from the
method name alone. A job outside a token's scope is PERMISSION_DENIED before the
store is touched, so the answer is the same whether the job exists or not.
"""

from __future__ import annotations

import time
from abc import abstractmethod
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


class _UnaryInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the SchedulerService's unary handlers with ``wrap``; leaves others alone."""

    async def intercept_service(self, continuation: Any,
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(SERVICE_PREFIX) or not handler.unary_unary:
            return handler
        behavior, deserialize = self.wrap(method[len(SERVICE_PREFIX):], handler, details)
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=deserialize,
            response_serializer=handler.response_serializer)

    @abstractmethod
    def wrap(self, name: str, handler: grpc.RpcMethodHandler,
             details: grpc.HandlerCallDetails) -> tuple[Behavior, Any]:
        """The new behaviour and request deserializer for method ``name``."""


class AuthInterceptor(_UnaryInterceptor):
    def __init__(self, tokens: TokenRegistry) -> None:
        self.tokens = tokens

    def wrap(self, name: str, handler: grpc.RpcMethodHandler,
             details: grpc.HandlerCallDetails) -> tuple[Behavior, Any]:
        rule = METHOD_RULES.get(name, "admin")  # a method without a rule is admin-only
        metadata = {k: v for k, v in (details.invocation_metadata or ())
                    if isinstance(v, str)}
        token = bearer_token(metadata)
        behavior = handler.unary_unary

        async def authorized(request: Any, context: grpc.aio.ServicerContext) -> Any:
            principal = self._authorize(token, rule, request)
            if isinstance(principal, tuple):
                await context.abort(*principal)
            assert isinstance(principal, Principal)
            reset = current_principal.set(principal)
            try:
                return await behavior(request, context)
            finally:
                current_principal.reset(reset)

        return authorized, handler.request_deserializer

    def _authorize(self, token: str | None, rule: str,
                   request: Any) -> Principal | tuple[grpc.StatusCode, str]:
        if token is None:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "missing bearer token (metadata 'authorization: Bearer <token>')")
        principal = self.tokens.authenticate(token)
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


class RawRequestInterceptor(_UnaryInterceptor):
    """Checks the raw request bytes: over ``limit`` bytes, or not a valid message, is
    INVALID_ARGUMENT saying so.

    gRPC's own ``max_receive_message_length`` (set higher, as a backstop) would answer
    RESOURCE_EXHAUSTED without naming the limit, and a parse error would surface as
    UNKNOWN.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def wrap(self, name: str, handler: grpc.RpcMethodHandler,
             details: grpc.HandlerCallDetails) -> tuple[Behavior, Any]:
        limit, parse, behavior = self.limit, handler.request_deserializer, handler.unary_unary

        def deserialize(data: bytes) -> Any:
            if len(data) > limit:
                return _Refused(f"request of {len(data)} bytes exceeds the limit "
                                f"max_message_bytes={limit}")
            try:
                return parse(data)
            except DecodeError as exc:
                return _Refused(f"request is not a valid {name}Request message: {exc}")

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Refused):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            return await behavior(request, context)

        return checked, deserialize


class MetricsInterceptor(_UnaryInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def wrap(self, name: str, handler: grpc.RpcMethodHandler,
             details: grpc.HandlerCallDetails) -> tuple[Behavior, Any]:
        metrics, behavior = self.metrics, handler.unary_unary

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                metrics.rpc_latency.labels(name).observe(time.perf_counter() - start)
                metrics.rpcs.labels(name, code.name if hasattr(code, "name") else
                                    str(code)).inc()

        return counted, handler.request_deserializer
