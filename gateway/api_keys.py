"""API keys with cluster privileges: hashing, records, privilege checks, and their Redis store.

Pure logic first (no I/O): parsing an ``Authorization`` header, salted hashing and verification
of secrets, the record wire format, and Elasticsearch's cluster-privilege model (a privilege
names action patterns; an action is allowed when every grant set of a key has a privilege that
matches it). Then ``ApiKeyStore``, the only part that talks to Redis: one hash,
``keys.API_KEYS`` (key id -> msgpack record). Secrets are never stored: a record holds a
per-key random salt and ``sha256(salt || secret)``.

Grants are a list of privilege-name sets that must *all* allow an action: a new key's own role
privileges followed by the grants of the key that created it ("limited by", as in
Elasticsearch), so a key can never do more than its creator.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import redis.asyncio as aioredis

from shared import keys

RECORD_VERSION = 1
SALT_BYTES = 16
ID_BYTES = 15  # 20 url-safe characters, like Elasticsearch's key ids
SECRET_BYTES = 16  # 22 url-safe characters
BOOTSTRAP_USER = "elastic"

# ---- privileges (Elasticsearch's ClusterPrivilegeResolver, the part inferq serves) -----------

ML_ADMIN = "cluster:admin/xpack/ml/*"
ML_MONITOR = "cluster:monitor/xpack/ml/*"
SECURITY_ADMIN = "cluster:admin/xpack/security/*"

PRIVILEGES: dict[str, tuple[str, ...]] = {
    "all": ("*",),
    "manage": ("cluster:*",),  # everything but security (see EXCLUDED)
    "monitor": ("cluster:monitor/*",),
    "manage_ml": (ML_ADMIN, ML_MONITOR),
    "monitor_ml": (ML_MONITOR,),
    "manage_inference": (
        "cluster:admin/xpack/inference/*",
        "cluster:monitor/xpack/inference*",
        "cluster:admin/xpack/ml/trained_models/deployment/start",
        "cluster:admin/xpack/ml/trained_models/deployment/stop",
        "cluster:monitor/xpack/ml/trained_models/deployment/infer",
    ),
    "monitor_inference": (
        "cluster:monitor/xpack/inference*",
        "cluster:monitor/xpack/ml/trained_models/deployment/infer",
    ),
    "manage_security": (SECURITY_ADMIN,),
    "manage_api_key": ("cluster:admin/xpack/security/api_key/*",),
}
EXCLUDED: dict[str, tuple[str, ...]] = {"manage": (SECURITY_ADMIN,)}


def _matches(patterns: Iterable[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action, p) for p in patterns)


def privilege_allows(privilege: str, action: str) -> bool:
    patterns = PRIVILEGES.get(privilege)
    if patterns is None:
        return False
    return _matches(patterns, action) and not _matches(EXCLUDED.get(privilege, ()), action)


def action_allowed(grants: Sequence[Sequence[str]], action: str) -> bool:
    """Every grant set must hold a privilege that allows the action (an empty list allows nothing)."""
    if not grants:
        return False
    return all(any(privilege_allows(p, action) for p in grant) for grant in grants)


NARROWEST_FIRST = (
    "monitor_ml",
    "monitor_inference",
    "manage_ml",
    "manage_inference",
    "manage_api_key",
    "manage_security",
    "monitor",
    "manage",
    "all",
)


def granting_privileges(action: str) -> list[str]:
    """The privilege names that allow ``action``, narrowest first (for the 403 message)."""
    return [name for name in NARROWEST_FIRST if privilege_allows(name, action)]


def unknown_privileges(names: Iterable[str]) -> list[str]:
    return [name for name in names if name not in PRIVILEGES]


# ---- secrets and the Authorization header ----------------------------------------------------


def new_id() -> str:
    return secrets.token_urlsafe(ID_BYTES)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def encode_credentials(key_id: str, secret: str) -> str:
    """The ``encoded`` form clients send: base64("id:secret")."""
    return base64.b64encode(f"{key_id}:{secret}".encode()).decode()


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def secret_matches(secret: str, salt: bytes, expected_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret, salt), expected_hash)


@dataclass(frozen=True)
class Credentials:
    scheme: str  # "apikey" or "basic"
    principal: str  # key id, or the Basic user name
    secret: str


class BadCredentials(ValueError):
    """An Authorization header that cannot be decoded."""


def parse_authorization(header: str) -> Credentials | None:
    """``ApiKey base64(id:key)`` or ``Basic base64(user:password)``; None for no header or another scheme."""
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("apikey", "basic"):
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadCredentials("credentials are not valid base64") from exc
    principal, sep, secret = decoded.partition(":")
    if not sep or not principal or not secret:
        raise BadCredentials("credentials must be <id>:<secret>")
    return Credentials(scheme, principal, secret)


# ---- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    username: str
    salt: bytes
    secret_hash: bytes
    grants: tuple[tuple[str, ...], ...]
    role_descriptors: dict[str, Any] = field(default_factory=dict)
    created_ms: int = 0
    expiration_ms: int | None = None
    invalidated: bool = False
    invalidated_ms: int | None = None

    def expired(self, now_ms: int) -> bool:
        return self.expiration_ms is not None and now_ms >= self.expiration_ms

    def usable(self, now_ms: int) -> bool:
        return not self.invalidated and not self.expired(now_ms)

    def pack(self) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "v": RECORD_VERSION,
                    "id": self.id,
                    "name": self.name,
                    "username": self.username,
                    "salt": self.salt,
                    "hash": self.secret_hash,
                    "grants": [list(g) for g in self.grants],
                    "roles": self.role_descriptors,
                    "created_ms": self.created_ms,
                    "expiration_ms": self.expiration_ms,
                    "invalidated": self.invalidated,
                    "invalidated_ms": self.invalidated_ms,
                },
                use_bin_type=True,
            )
        )

    @staticmethod
    def unpack(raw: bytes | str) -> ApiKeyRecord:
        if isinstance(raw, str):  # a client made with decode_responses=True
            raise TypeError("api key records are binary; use a client without decode_responses")
        data = msgpack.unpackb(raw, raw=False)
        if not isinstance(data, dict) or data.get("v") != RECORD_VERSION:
            raise ValueError("not an inferq api key record")
        return ApiKeyRecord(
            id=str(data["id"]),
            name=str(data["name"]),
            username=str(data["username"]),
            salt=bytes(data["salt"]),
            secret_hash=bytes(data["hash"]),
            grants=tuple(tuple(str(p) for p in g) for g in data["grants"]),
            role_descriptors=dict(data.get("roles") or {}),
            created_ms=int(data.get("created_ms", 0)),
            expiration_ms=None if data.get("expiration_ms") is None else int(data["expiration_ms"]),
            invalidated=bool(data.get("invalidated", False)),
            invalidated_ms=None if data.get("invalidated_ms") is None else int(data["invalidated_ms"]),
        )

    def info(self) -> dict[str, Any]:
        """The public view (``GET /_security/api_key``): never the salt or the hash."""
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "type": "rest",
            "creation": self.created_ms,
            "invalidated": self.invalidated,
            "username": self.username,
            "realm": "_es_api_key",
            "role_descriptors": self.role_descriptors,
            "metadata": {},
        }
        if self.expiration_ms is not None:
            body["expiration"] = self.expiration_ms
        if self.invalidated_ms is not None:
            body["invalidation"] = self.invalidated_ms
        return body


def is_bootstrap(record: ApiKeyRecord) -> bool:
    """The key ``INFERQ_BOOTSTRAP_API_KEY`` made (re-made by every gateway start)."""
    return record.name == "bootstrap" and record.username == BOOTSTRAP_USER and "bootstrap" in record.role_descriptors


def role_privileges(role_descriptors: Mapping[str, Any]) -> list[str]:
    """The union of the ``cluster`` privileges of every role descriptor."""
    names: list[str] = []
    for descriptor in role_descriptors.values():
        for name in (descriptor or {}).get("cluster") or []:
            if name not in names:
                names.append(str(name))
    return names


def new_record(
    *,
    name: str,
    username: str,
    role_descriptors: Mapping[str, Any],
    limited_by: Sequence[Sequence[str]],
    now_ms: int,
    expiration_ms: int | None = None,
    key_id: str | None = None,
    secret: str | None = None,
) -> tuple[ApiKeyRecord, str]:
    """A fresh record and its plaintext secret (returned once, to the caller only)."""
    secret = secret or new_secret()
    salt = secrets.token_bytes(SALT_BYTES)
    own = role_privileges(role_descriptors)
    # no role descriptors: a snapshot of the creator's privileges, as Elasticsearch does
    grants = ((tuple(own),) if role_descriptors else ()) + tuple(tuple(g) for g in limited_by)
    record = ApiKeyRecord(
        id=key_id or new_id(),
        name=name,
        username=username,
        salt=salt,
        secret_hash=hash_secret(secret, salt),
        grants=grants,
        role_descriptors=dict(role_descriptors),
        created_ms=now_ms,
        expiration_ms=expiration_ms,
    )
    return record, secret


# ---- verification with a short in-process cache ---------------------------------------------


@dataclass
class VerifiedCache:
    """Key ids whose presented secret was verified, for ``ttl_s``: the hot path then costs no
    Redis round trip. Entries are keyed by a digest of the whole credential, never the secret.
    ``ttl_s`` is also how long another gateway may still accept a key after it is invalidated
    (the invalidating gateway forgets it at once): at most one HGET per key per second."""

    ttl_s: float = 1.0
    max_entries: int = 10_000
    _entries: dict[bytes, tuple[float, ApiKeyRecord]] = field(default_factory=dict)

    @staticmethod
    def digest(credentials: Credentials) -> bytes:
        return hashlib.sha256(f"{credentials.scheme}\0{credentials.principal}\0{credentials.secret}".encode()).digest()

    def get(self, credentials: Credentials, now_s: float) -> ApiKeyRecord | None:
        entry = self._entries.get(self.digest(credentials))
        if entry is None:
            return None
        if entry[0] <= now_s:
            self._entries.pop(self.digest(credentials), None)
            return None
        return entry[1]

    def put(self, credentials: Credentials, record: ApiKeyRecord, now_s: float) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[self.digest(credentials)] = (now_s + self.ttl_s, record)

    def forget(self, key_ids: Iterable[str]) -> None:
        doomed = set(key_ids)
        for digest, (_, record) in list(self._entries.items()):
            if record.id in doomed:
                self._entries.pop(digest, None)


# ---- Redis I/O -------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


class ApiKeyStore:
    """Records in the ``keys.API_KEYS`` hash. Verification costs one HGET, or none while cached."""

    def __init__(self, client: aioredis.Redis, cache: VerifiedCache | None = None) -> None:
        self.redis = client
        self.cache = cache if cache is not None else VerifiedCache()

    async def put(self, record: ApiKeyRecord) -> None:
        await self.redis.hset(keys.API_KEYS, record.id, record.pack())

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        raw = await self.redis.hget(keys.API_KEYS, key_id)
        if raw is None:
            return None
        try:
            return ApiKeyRecord.unpack(raw)
        except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError):
            return None

    async def all(self) -> list[ApiKeyRecord]:
        records = []
        for raw in (await self.redis.hgetall(keys.API_KEYS)).values():
            try:
                records.append(ApiKeyRecord.unpack(raw))
            except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError):
                continue
        return sorted(records, key=lambda r: (r.created_ms, r.id))

    async def verify(self, credentials: Credentials, *, key_id: str | None = None) -> ApiKeyRecord | None:
        """The usable record whose secret matches, else None. ``key_id`` overrides the principal
        (Basic auth of the bootstrap user names a user, not a key)."""
        now_s, now = time.monotonic(), now_ms()
        cached = self.cache.get(credentials, now_s)
        if cached is not None:
            return cached if cached.usable(now) else None
        record = await self.get(key_id or credentials.principal)
        if record is None or not secret_matches(credentials.secret, record.salt, record.secret_hash):
            return None
        if not record.usable(now):
            return None
        self.cache.put(credentials, record, now_s)
        return record

    async def invalidate(self, key_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Mark records invalidated; returns (newly invalidated, previously invalidated) ids."""
        newly: list[str] = []
        already: list[str] = []
        for key_id in key_ids:
            record = await self.get(key_id)
            if record is None:
                continue
            if record.invalidated:
                already.append(key_id)
                continue
            await self.put(replace(record, invalidated=True, invalidated_ms=now_ms()))
            newly.append(key_id)
        self.cache.forget([*newly, *already])
        return newly, already

    async def ensure_bootstrap(self, spec: str) -> ApiKeyRecord:
        """Create (or replace) the ``id:secret`` key with every privilege; a bootstrap key of
        another id (an earlier ``INFERQ_BOOTSTRAP_API_KEY``) is invalidated: this is how the
        operator retires one."""
        key_id, sep, secret = spec.partition(":")
        if not sep or not key_id or not secret:
            raise ValueError("INFERQ_BOOTSTRAP_API_KEY must be <id>:<secret>")
        record, _ = new_record(
            name="bootstrap",
            username=BOOTSTRAP_USER,
            role_descriptors={"bootstrap": {"cluster": ["all"]}},
            limited_by=(),
            now_ms=now_ms(),
            key_id=key_id,
            secret=secret,
        )
        await self.put(record)
        self.cache.forget([key_id])
        await self.invalidate([r.id for r in await self.all() if is_bootstrap(r) and r.id != key_id and not r.invalidated])
        return record
