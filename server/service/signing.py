"""Deployment keys that sign checkpoint states (HMAC-SHA256), so the service can tell
its own checkpoints from edited or forged ones.

The key file (``--state-key-file``) is JSON; the first key signs, every key verifies
(rotation: put the new key first, keep the old ones until their checkpoints are gone)::

    {"keys": [{"id": "2026-12", "secret": "<32+ random characters>"},
              {"id": "2026-06", "secret": "<...>"}]}

The keys live only in that file (a Kubernetes Secret), never in the job store: anyone
who can read the store still cannot sign a state.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_SECRET_LENGTH = 32


class StateKeyError(ValueError):
    """The key file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class StateKeys:
    """Named HMAC keys; ``keys[0]`` signs."""

    keys: tuple[tuple[str, bytes], ...]

    @property
    def signing_key_id(self) -> str:
        return self.keys[0][0]

    def sign(self, payload: bytes) -> tuple[str, str]:
        """(key id, hex signature) of ``payload`` with the signing key."""
        key_id, secret = self.keys[0]
        return key_id, hmac.new(secret, payload, hashlib.sha256).hexdigest()

    def knows(self, key_id: str) -> bool:
        return any(k == key_id for k, _ in self.keys)

    def verify(self, key_id: str, payload: bytes, signature: str) -> bool:
        """Whether ``signature`` is ``key_id``'s signature of exactly ``payload``."""
        for known, secret in self.keys:
            if known == key_id:
                expected = hmac.new(secret, payload, hashlib.sha256).hexdigest()
                return hmac.compare_digest(expected, signature)
        return False

    @classmethod
    def from_document(cls, document: Any, source: str) -> StateKeys:
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise StateKeyError(f"{source}: must be an object with a list 'keys'")
        entries = document["keys"]
        if not entries:
            raise StateKeyError(f"{source}: 'keys' is empty; give at least one key")
        keys: list[tuple[str, bytes]] = []
        for i, entry in enumerate(entries):
            where = f"{source}: keys[{i}]"
            if not isinstance(entry, Mapping) or set(entry) != {"id", "secret"}:
                raise StateKeyError(f"{where}: must be an object with exactly 'id' and 'secret'")
            key_id, secret = entry["id"], entry["secret"]
            if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
                raise StateKeyError(f"{where}.id: 1-64 letters, digits, '.', '_' or '-'")
            if any(k == key_id for k, _ in keys):
                raise StateKeyError(f"{where}.id: {key_id!r} appears twice")
            if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
                raise StateKeyError(f"{where}.secret: must be a string of at least "
                                    f"{MIN_SECRET_LENGTH} characters")
            keys.append((key_id, secret.encode()))
        return cls(tuple(keys))

    @classmethod
    def load(cls, path: str | Path) -> StateKeys:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise StateKeyError(f"cannot read the state key file {path}: {exc.strerror}") from None
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise StateKeyError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_document(document, str(path))

    def __repr__(self) -> str:  # never show a secret
        return f"StateKeys(ids={[k for k, _ in self.keys]})"


# -- plan horizons -----------------------------------------------------------------------
# A plan's end, signed, so a rank can later prove "I hold values up to here" and the
# service keeps every change out of that plan even if the store lost its record of it.
# A job-scoped caller cannot forge one: without the signature, a claim at the end of
# training would block every change of the job.

def _horizon_payload(job_id: str, incarnation: str, generation: int, plan_end: int) -> bytes:
    return json.dumps(["plan-horizon", job_id, incarnation, int(generation), int(plan_end)],
                      separators=(",", ":")).encode()


def sign_horizon(keys: StateKeys, job_id: str, incarnation: str, generation: int,
                 plan_end: int) -> str:
    """The token ``"<key id>:<hex HMAC>"`` of a plan of ``job_id`` ending at ``plan_end``."""
    key_id, signature = keys.sign(_horizon_payload(job_id, incarnation, generation, plan_end))
    return f"{key_id}:{signature}"


def check_horizon(keys: StateKeys, token: str, job_id: str, incarnation: str,
                  generation: int, plan_end: int) -> bool | None:
    """True: ``token`` is a known key's signature of this horizon; False: a known key's
    but not of this (forged, or another job, generation or end); None: no signature
    this server can check (empty, or a key id it does not know, e.g. mid-rotation)."""
    if not token:
        return None
    key_id, colon, signature = token.partition(":")
    if not colon:
        return False
    if not keys.knows(key_id):
        return None
    return keys.verify(key_id, _horizon_payload(job_id, incarnation, generation, plan_end),
                       signature)
