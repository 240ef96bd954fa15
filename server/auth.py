"""Bearer tokens: who may do what to which job. No gRPC types here.

Tokens come from a JSON document (a file, or the ``PARAMSCHED_TOKENS`` variable)::

    {"tokens": [
        {"name": "platform", "token": "<secret>", "role": "admin"},
        {"name": "team-a", "token": "<secret>", "jobs": ["job-42"], "job_prefixes": ["team-a-"],
         "max_jobs": 100}
    ]}

An admin token may do everything to every job. A job-scoped token may create, attach
to, report on, resume and read the jobs it lists (by id or id prefix), and list those;
deleting and changing jobs is for admins. A job-scoped token has a quota of live jobs
(``max_jobs``, default ``DEFAULT_MAX_JOBS``): creating one more is refused until
finished jobs are deleted (or expire after the server's ``--retention``). Tokens are
compared in constant time and are never logged; a principal is known by its ``name``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A job-scoped token's quota of live jobs unless its entry gives ``max_jobs``.
DEFAULT_MAX_JOBS = 1000


class AuthConfigError(ValueError):
    """The token document is unusable; the message says where."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    admin: bool = False
    jobs: frozenset[str] = frozenset()
    job_prefixes: tuple[str, ...] = ()
    max_jobs: int | None = None  # live jobs it may have (None: no quota, for admins)

    def may_access(self, job_id: str) -> bool:
        return self.admin or job_id in self.jobs or job_id.startswith(self.job_prefixes)


ANONYMOUS = Principal("anonymous", admin=True)  # when auth is off

# The caller of the request being served (set by the gRPC auth interceptor).
current_principal: ContextVar[Principal] = ContextVar("current_principal", default=ANONYMOUS)


@dataclass(frozen=True)
class _Entry:
    secret: bytes
    principal: Principal


class TokenRegistry:
    """Looks bearer tokens up in constant time."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = entries

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        presented = token.encode()
        found: Principal | None = None
        # Compare against every entry, so the time taken does not say which one matched.
        for entry in self._entries:
            if hmac.compare_digest(entry.secret, presented):
                found = entry.principal
        return found

    @classmethod
    def from_document(cls, document: Mapping[str, Any], source: str) -> TokenRegistry:
        tokens = document.get("tokens") if isinstance(document, Mapping) else None
        if not isinstance(tokens, list):
            raise AuthConfigError(f"{source}: expected {{\"tokens\": [...]}}")
        entries: list[_Entry] = []
        names: set[str] = set()
        for i, raw in enumerate(tokens):
            where = f"{source}: tokens[{i}]"
            if not isinstance(raw, Mapping):
                raise AuthConfigError(f"{where}: must be an object")
            name, secret = raw.get("name"), raw.get("token")
            if not isinstance(name, str) or not name:
                raise AuthConfigError(f"{where}.name: must be a non-empty string")
            if name in names:
                raise AuthConfigError(f"{where}.name: {name!r} is used twice")
            if not isinstance(secret, str) or len(secret) < 16:
                raise AuthConfigError(f"{where}.token: must be a string of 16 or more characters")
            role = raw.get("role", "job")
            if role not in ("admin", "job"):
                raise AuthConfigError(f"{where}.role: must be 'admin' or 'job'")
            jobs = raw.get("jobs", [])
            prefixes = raw.get("job_prefixes", [])
            for key, value in (("jobs", jobs), ("job_prefixes", prefixes)):
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise AuthConfigError(f"{where}.{key}: must be a list of non-empty strings")
            if role == "job" and not jobs and not prefixes:
                raise AuthConfigError(f"{where}: a job-scoped token needs jobs or job_prefixes")
            max_jobs = raw.get("max_jobs", DEFAULT_MAX_JOBS if role == "job" else None)
            if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(
                    max_jobs, int) or max_jobs < 1):
                raise AuthConfigError(f"{where}.max_jobs: must be an integer >= 1")
            if role == "admin" and "max_jobs" in raw:
                raise AuthConfigError(f"{where}.max_jobs: admin tokens have no quota")
            names.add(name)
            principal = Principal(name, admin=role == "admin", jobs=frozenset(jobs),
                                  job_prefixes=tuple(prefixes), max_jobs=max_jobs)
            entries.append(_Entry(secret.encode(), principal))
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path | None = None, inline: str | None = None) -> TokenRegistry:
        """From a file, or an inline JSON document; no source means auth is off."""
        if path:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise AuthConfigError(f"cannot read tokens file {path}: {exc}") from None
            source = str(path)
        elif inline:
            text, source = inline, "PARAMSCHED_TOKENS"
        else:
            return cls([])
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise AuthConfigError(f"{source}: not valid JSON: {exc}") from None
        return cls.from_document(document, source)


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if any."""
    value = metadata.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
