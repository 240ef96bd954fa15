"""The dashboard's HTTP server: static pages and JSON under ``/api/v1/``, in the same
asyncio process as gRPC, on the same ``SchedulerService``, tokens and TLS.

Everything here is a front end like the gRPC servicer: parse the request, call the
domain service, shape its views as JSON (``views``). Domain errors map to HTTP statuses
in one place (``STATUS``). Auth mirrors the gRPC interceptor: a bearer token in the
``Authorization`` header (never in a URL); reading a job needs a token whose scope holds
it, listing shows only the jobs in scope, changes are for admin tokens; a job outside
the scope is 403 whether or not it exists. Pages and scripts need no token (they hold
no data); every API answer does when tokens are configured.

Every response carries a strict Content-Security-Policy (scripts and styles from this
origin only, no inline code, no third-party requests), ``nosniff`` and no framing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..auth import ANONYMOUS, TokenRegistry, bearer_token, current_principal
from ..errors import InvalidArgument, PermissionDenied, ServiceError, Unavailable
from ..service import Plan, SchedulerService
from . import views
from .changes import MAX_PREVIEW_ITERATIONS, parse_change

log = logging.getLogger("paramsched.web")

# Domain error code -> HTTP status (the gRPC servicer's _STATUS, for HTTP).
STATUS = {
    "invalid_argument": 400,
    "out_of_range": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "aborted": 409,
    "failed_precondition": 412,
    "unavailable": 503,
    "internal": 500,
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {"app.js": "text/javascript", "chart.js": "text/javascript", "style.css": "text/css",
          "favicon.svg": "image/svg+xml"}
MAX_BODY_BYTES = 1024 * 1024
MAX_POINTS = 10_000  # samples per curve request
MAX_VALUES_PER_CALL = 100_000  # consecutive iterations per curve request
LIST_CONCURRENCY = 8  # current-values look-ups in flight for one page of jobs

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthenticated(ServiceError):
    code = "unauthenticated"


def tls_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """The gRPC server's TLS settings for HTTPS (client certificates with ``client_ca``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _json(data: Any, status: int = 200) -> web.Response:
    body = json.dumps(views.finite(data), allow_nan=False, separators=(",", ":"))
    return web.Response(text=body, status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def error_response(exc: ServiceError) -> web.Response:
    error: dict[str, Any] = {"code": exc.code, "message": str(exc)}
    if isinstance(exc, InvalidArgument):
        error["field"] = exc.field
    return _json({"error": error}, STATUS.get(exc.code, 500))


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebServer:
    """The dashboard on ``host:port`` (0: any free port); ``start()`` binds and serves."""

    def __init__(self, service: SchedulerService, tokens: TokenRegistry, *, host: str,
                 port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.service = service
        self.tokens = tokens
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        # Fenced reports per job, for the "fenced" state: observe the service's events.
        self.fences = views.FenceLog(service.events)
        service.events = self.fences
        self._runner: web.AppRunner | None = None
        self._files = {name: (resources.files(__package__) / "static" / name).read_bytes()
                       for name in [*STATIC, "index.html"]}

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES,
                              middlewares=[self._headers, self._errors, self._auth])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/v1/session", self._session)
        app.router.add_get("/api/v1/jobs", self._jobs)
        app.router.add_get("/api/v1/jobs/{job_id}", self._job)
        app.router.add_get("/api/v1/jobs/{job_id}/values", self._values)
        app.router.add_get("/api/v1/jobs/{job_id}/history", self._history)
        app.router.add_post("/api/v1/jobs/{job_id}/changes", self._change)
        return app

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- middlewares --------------------------------------------------------------
    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # 404, 405...: an answer, with the headers below
            if request.path.startswith("/api/"):
                response = _json({"error": {"code": "http", "message": exc.reason}},
                                 exc.status)
            else:
                response = web.Response(text=f"{exc.status} {exc.reason}", status=exc.status)
        headers = response.headers
        headers["Content-Security-Policy"] = CSP
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        if self.ssl_context is not None:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServiceError as exc:
            return error_response(exc)
        except web.HTTPException:
            raise
        except Exception:  # never let one request take the server down
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return _json({"error": {"code": "internal",
                                    "message": "internal error; see the server log"}}, 500)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        self._check_origin(request)
        if self.tokens.enabled:
            token = bearer_token({"authorization": request.headers.get("Authorization", "")})
            if token is None:
                raise Unauthenticated("missing bearer token (header 'Authorization: Bearer "
                                      "<token>')")
            principal = self.tokens.authenticate(token)
            if principal is None:
                raise Unauthenticated("unknown bearer token")
        else:
            principal = ANONYMOUS
        reset = current_principal.set(principal)
        try:
            return await handler(request)
        finally:
            current_principal.reset(reset)

    def _check_origin(self, request: web.Request) -> None:
        """Refuse what a browser sends on another site's behalf: a foreign Origin; a
        POST that is not JSON (a form post needs no CORS preflight); and, on a loopback
        server without tokens, a Host that is not loopback (DNS rebinding: another site's
        name pointed at 127.0.0.1)."""
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != request.host:
            raise PermissionDenied(f"requests from origin {origin!r} are not accepted")
        if request.method == "POST" and request.content_type != "application/json":
            raise InvalidArgument("must be application/json", field="Content-Type")
        if not self.tokens.enabled and _is_loopback(self.host):
            host = urlsplit(f"//{request.host}").hostname or ""
            if not _is_loopback(host):
                raise PermissionDenied(f"host {host!r} is not accepted without tokens")

    # -- pages ----------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._files["index.html"], content_type="text/html",
                            charset="utf-8", headers={"Cache-Control": "no-cache"})

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._files[name], content_type=STATIC[name],
                            headers={"Cache-Control": "no-cache"})

    # -- access rules (the gRPC interceptor's) ---------------------------------------
    @staticmethod
    def _job_id(request: web.Request, *, admin: bool = False) -> str:
        principal = current_principal.get()
        job_id = request.match_info["job_id"]
        if admin and not principal.admin:
            raise PermissionDenied(f"token {principal.name!r} is not an admin token")
        if not principal.may_access(job_id):
            raise PermissionDenied(f"token {principal.name!r} may not access job {job_id!r}")
        return job_id

    # -- the API --------------------------------------------------------------------
    async def _session(self, request: web.Request) -> web.Response:
        principal = current_principal.get()
        return _json({"auth": self.tokens.enabled, "principal": principal.name,
                      "admin": principal.admin, "tls": self.ssl_context is not None})

    async def _current(self, job_id: str, at: int) -> Plan | None:
        try:
            return await self.service.values(job_id, at, at + 1)
        except ServiceError:
            return None  # deleted meanwhile, or its arithmetic fails there: no values

    async def _jobs(self, request: web.Request) -> web.Response:
        query = request.query
        page_size = _int(query, "page_size", 50, minimum=1, maximum=1000)
        found, token = await self.service.list(query.get("prefix", ""), page_size,
                                               query.get("page_token", ""))
        gate = asyncio.Semaphore(LIST_CONCURRENCY)

        async def row(view: Any) -> dict[str, Any]:
            async with gate:
                now = await self._current(view.record.job_id, views.frontier(view))
            return views.summary(view, now, self.fences.recent(view.record.job_id))

        rows = await asyncio.gather(*(row(v) for v in found))
        return _json({"jobs": rows, "next_page_token": token})

    async def _job(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        view = await self.service.get(job_id)
        now = await self._current(job_id, views.frontier(view))
        return _json(views.detail(view, now, self.fences.recent(job_id)))

    async def _values(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        view = await self.service.get(job_id)
        query = request.query
        end = view.max_iters + 1
        start = _int(query, "start", 0, minimum=0, maximum=view.max_iters)
        stop = _int(query, "stop", end, minimum=start + 1, maximum=end)
        if "step" in query:
            step = _int(query, "step", 1, minimum=1, maximum=end)
        else:
            points = _int(query, "points", 2000, minimum=2, maximum=MAX_POINTS)
            step = max(1, math.ceil((stop - start) / points))
        if step == 1 and stop - start > MAX_VALUES_PER_CALL:
            raise InvalidArgument(
                f"{stop - start} iterations exceed {MAX_VALUES_PER_CALL} per request; ask "
                "in pages (start, stop) or sample them (step, points)", field="stop")
        if step > 1 and math.ceil((stop - start) / step) > MAX_POINTS:
            raise InvalidArgument(f"more than {MAX_POINTS} samples; use a larger step",
                                  field="step")
        plans, waits = await self._sampled(job_id, start, stop, step)
        data = views.curves(plans, view.params, view.spec.num_groups)
        data.update(start=start, stop=stop, step=step, waits_for_epoch=waits,
                    generation=view.record.generation, incarnation=view.record.incarnation,
                    max_iters=view.max_iters, issued_until=view.record.issued_until)
        return _json(data)

    async def _sampled(self, job_id: str, start: int, stop: int,
                       step: int) -> tuple[list[Plan], int | None]:
        """Every ``step``-th iteration of [start, stop) and the last one; the values
        stop where a ReduceOnPlateau decision is pending (``waits_for_epoch``).

        One strided ``GetValues`` whose pages are followed to the end (each within the
        server's cost budget, each continuing from the last one's replay state), not
        one call per sample: a wide job's long range comes complete, at the cost of
        its points plus one pass of replay. A job changed between two pages (a stale
        token) is read again from the first page."""
        for _ in range(3):
            try:
                plans = await self._pages(job_id, start, stop, step)
                break
            except InvalidArgument as exc:
                if exc.field != "page_token":
                    raise
        else:
            raise Unavailable("the job kept changing while its values were read; ask again")
        waits = plans[-1].waits_for_epoch
        last = stop - 1
        if waits is None and (last - start) % step:
            tail = await self.service.values(job_id, last, stop)
            if not tail.values:
                return plans, tail.waits_for_epoch
            plans.append(tail)
        return plans, waits

    async def _pages(self, job_id: str, start: int, stop: int, step: int) -> list[Plan]:
        plans: list[Plan] = []
        token = ""
        while True:
            page = await self.service.values(job_id, start, stop, stride=step,
                                             page_token=token)
            plans.append(page)
            if not page.next_page_token:
                return plans
            token = page.next_page_token

    async def _history(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request)
        trail = await self.service.history(job_id)
        return _json({"entries": [views.audit_entry(e) for e in trail]})

    async def _change(self, request: web.Request) -> web.Response:
        job_id = self._job_id(request, admin=True)
        try:
            body = await request.json()
        except ValueError as exc:
            raise InvalidArgument(f"not valid JSON: {exc}", field="body") from None
        change = parse_change(body)
        view = await self.service.get(job_id)
        start = change.change.get("from_iteration")
        if start is None:
            start = max([view.record.issued_until] + [
                int(c.get("from_iteration") or 0) for c in view.record.changes or []])
        end = max(view.max_iters, change.change.get("max_iters") or 0) + 1
        preview = max(1, min(MAX_PREVIEW_ITERATIONS, end - start))
        result = await self.service.reschedule(
            job_id, change.change, dry_run=change.dry_run, force=change.force,
            action=change.kind, reason=change.reason, preview=preview)

        def sampled(plan: Plan) -> dict[str, Any]:
            step = max(1, math.ceil(len(plan.values) / change.preview_points))
            picked = [Plan(plan.start + i, plan.params, plan.num_groups, [plan.values[i]],
                           plan.generation) for i in range(0, len(plan.values), step)]
            if plan.values and (len(plan.values) - 1) % step:
                last = len(plan.values) - 1
                picked.append(Plan(plan.start + last, plan.params, plan.num_groups,
                                   [plan.values[last]], plan.generation))
            data = views.curves(picked, plan.params, plan.num_groups)
            data.update(start=plan.start, stop=plan.start + len(plan.values), step=step,
                        max_iters=plan.max_iters, waits_for_epoch=plan.waits_for_epoch)
            return data

        entry = result.audit or {
            "action": change.kind, "iteration": result.from_iteration,
            "principal": current_principal.get().name, "generation": view.record.generation,
            "details": {**change.change, "from_iteration": result.from_iteration},
            "reason": change.reason,
            "before": result.before_at, "after": result.after_at}
        return _json({
            "applied": result.applied,
            "from_iteration": result.from_iteration,
            "job": views.summary(result.view, None, self.fences.recent(job_id)),
            "before": sampled(result.before),
            "after": sampled(result.after),
            "entry": views.audit_entry(entry),
        })


def _int(query: Any, key: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"must be an integer, got {raw!r}", field=key) from None
    if not minimum <= value <= maximum:
        raise InvalidArgument(f"must be in [{minimum}, {maximum}], got {value}", field=key)
    return value
