"""Models in Redis: config, definition parts and vocabulary (spec §4).

Keys (tag ``{model:<id>}``): ``config`` (JSON), ``part:<n>`` (raw bytes), ``parts`` (hash:
part number -> decoded length, plus ``total_parts`` and ``total_definition_length``, and once
the definition is complete its ``sha256`` and validation ``verdict``: ``ok`` or the refusal),
``vocabulary`` (JSON); the set ``inferq:models`` lists every id. The ``parts`` hash is also the
index of the part keys, so deleting a model needs no SCAN. Works with the asyncio client
(gateway) and, for reading definitions, with the sync client (workers).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from shared import keys
from shared.errors import BadRequest, NotFound, ResourceAlreadyExists, model_not_found
from shared.model_validation import ModelRefused, validate_archive
from shared.redis_conn import as_bytes, text

MODEL_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_\-\.]*[a-z0-9])?$")
MAX_ID_LENGTH = 64
MAX_DEFINITION_BYTES = 2 * 1024**3  # the gateway holds a whole definition while validating it
VERDICT_OK = "ok"


def valid_id(value: str) -> bool:
    return len(value) <= MAX_ID_LENGTH and MODEL_ID_RE.match(value) is not None


@dataclass(frozen=True)
class DefinitionStatus:
    total_parts: int
    total_definition_length: int
    parts: dict[int, int]  # part -> decoded length

    @property
    def stored_bytes(self) -> int:
        return sum(self.parts.values())

    @property
    def complete(self) -> bool:
        return (
            self.total_parts > 0
            and len(self.parts) == self.total_parts
            and self.stored_bytes == self.total_definition_length
        )


def _status_from_hash(raw: Mapping[bytes | str, bytes | str]) -> DefinitionStatus | None:
    if not raw:
        return None
    parts: dict[int, int] = {}
    total_parts = total_length = 0
    for field, value in raw.items():
        name = text(field)
        if name == "total_parts":
            total_parts = int(value)
        elif name == "total_definition_length":
            total_length = int(value)
        elif name.isdigit():
            parts[int(name)] = int(value)
    return DefinitionStatus(total_parts, total_length, parts)


class ModelStore:
    """Asyncio access for the gateway."""

    def __init__(self, redis_client: aioredis.Redis) -> None:
        self.redis = redis_client

    async def exists(self, model_id: str) -> bool:
        return bool(await self.redis.exists(keys.model_config(model_id)))

    async def get_config(self, model_id: str) -> dict[str, Any]:
        raw = await self.redis.get(keys.model_config(model_id))
        if raw is None:
            raise model_not_found(model_id)
        config: dict[str, Any] = json.loads(raw)
        return config

    async def create(self, model_id: str, config: dict[str, Any]) -> dict[str, Any]:
        stored = dict(config)
        stored["model_id"] = model_id
        stored["_uid"] = secrets.token_hex(8)  # a re-upload under the same id never shares cache
        created = await self.redis.set(keys.model_config(model_id), json.dumps(stored), nx=True)
        if not created:
            raise ResourceAlreadyExists(f"Trained machine learning model [{model_id}] already exists")
        await self.redis.sadd(keys.MODELS, model_id)
        return stored

    async def update_config(self, model_id: str, config: dict[str, Any]) -> None:
        await self.redis.set(keys.model_config(model_id), json.dumps(config), xx=True)

    async def ids(self) -> list[str]:
        return sorted(text(m) for m in await self.redis.smembers(keys.MODELS))

    async def match(self, expression: str, *, allow_no_match: bool) -> list[str]:
        """Resolve '_all', '*', comma lists and wildcards to stored ids (sorted)."""
        all_ids = await self.ids()
        return match_ids(expression, all_ids, allow_no_match=allow_no_match)

    async def put_part(self, model_id: str, part: int, data: bytes, total_parts: int, total_length: int) -> None:
        meta_key = keys.model_parts_meta(model_id)
        status = await self.definition_status(model_id)
        if status is not None and part not in status.parts and status.stored_bytes + len(data) > total_length:
            raise BadRequest(
                f"[{model_id}] definition part [{part}] would take the stored bytes past "
                f"[total_definition_length] {total_length}"
            )
        if status is None and len(data) > total_length:
            raise BadRequest(f"[{model_id}] definition part [{part}] is longer than [total_definition_length] {total_length}")
        stored = await self.redis.hsetnx(meta_key, str(part), len(data))
        if not stored:
            raise ResourceAlreadyExists(
                f"Trained machine learning model chunked doc [{model_id}] [{part}] already exists"
            )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.model_part(model_id, part), data)
            pipe.hset(meta_key, mapping={"total_parts": total_parts, "total_definition_length": total_length})
            await pipe.execute()

    async def definition_status(self, model_id: str) -> DefinitionStatus | None:
        return _status_from_hash(await self.redis.hgetall(keys.model_parts_meta(model_id)))

    async def checked_definition(self, model_id: str, status: DefinitionStatus) -> str:
        """The sha256 of a complete definition that passed validation (``ModelRefused``, a 400,
        otherwise). The verdict is computed once, off the event loop, and kept with the parts."""
        meta_key = keys.model_parts_meta(model_id)
        stored_sha256, stored_verdict = await self.redis.hmget(meta_key, ["sha256", "verdict"])
        if stored_sha256 is not None and stored_verdict is not None:
            sha256, verdict = text(stored_sha256), text(stored_verdict)
        else:
            data = b"".join([as_bytes(await self.redis.get(keys.model_part(model_id, p)) or b"") for p in range(status.total_parts)])
            sha256, verdict = await asyncio.to_thread(_verdict, data)
            await self.redis.hset(meta_key, mapping={"sha256": sha256, "verdict": verdict})
        if verdict != VERDICT_OK:
            raise ModelRefused(verdict)
        return sha256

    async def put_vocabulary(self, model_id: str, vocabulary: dict[str, Any]) -> None:
        await self.redis.set(keys.model_vocabulary(model_id), json.dumps(vocabulary))

    async def has_vocabulary(self, model_id: str) -> bool:
        return bool(await self.redis.exists(keys.model_vocabulary(model_id)))

    async def delete(self, model_id: str) -> None:
        """Every key of the model in one ``UNLINK`` (they share its hash tag; the parts are
        those the ``parts`` hash names, no SCAN), then its ``inferq:models`` entry: a delete
        cut short leaves a listed model to delete again, never parts nobody can find. Each call
        is awaited on its own: on a cluster pipeline a multi-key ``unlink`` is a coroutine,
        not a queued command, and parts were once left behind unsent."""
        status = await self.definition_status(model_id)
        parts = set(status.parts) | set(range(status.total_parts)) if status is not None else set()
        model_keys = [keys.model_part(model_id, part) for part in sorted(parts)]
        model_keys += [keys.model_parts_meta(model_id), keys.model_vocabulary(model_id), keys.model_config(model_id)]
        await self.redis.unlink(*model_keys)
        await self.redis.srem(keys.MODELS, model_id)


def _verdict(data: bytes) -> tuple[str, str]:
    """(sha256, ``ok`` or the reason the model is refused) of a whole definition."""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        validate_archive(data)
    except ModelRefused as refused:
        return sha256, str(refused.reason)
    return sha256, VERDICT_OK


def match_ids(expression: str, all_ids: Sequence[str], *, allow_no_match: bool) -> list[str]:
    expression = expression.strip() or "_all"
    found: set[str] = set()
    for token in (t.strip() for t in expression.split(",")):
        if not token:
            continue
        if token in ("_all", "*"):
            found.update(all_ids)
            continue
        if "*" in token:
            hits = [i for i in all_ids if fnmatch.fnmatchcase(i, token)]
            if not hits and not allow_no_match:
                raise model_not_found(token)
            found.update(hits)
            continue
        if token not in all_ids:
            raise model_not_found(token)
        found.add(token)
    return sorted(found)


def read_definition(client: redis.Redis, model_id: str, expected_sha256: str) -> bytes:
    """Fetch a whole definition (workers; sync) and check its content hash."""
    status = _status_from_hash(client.hgetall(keys.model_parts_meta(model_id)))
    if status is None or not status.complete:
        raise NotFound(f"Could not find trained model definition [{model_id}]")
    data = b"".join(_read_parts(client, model_id, status.total_parts))
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 and actual != expected_sha256:
        raise BadRequest(f"definition of [{model_id}] changed while loading (sha256 {actual})")
    return data


def _read_parts(client: redis.Redis, model_id: str, total_parts: int) -> Iterator[bytes]:
    for part in range(total_parts):
        yield as_bytes(client.get(keys.model_part(model_id, part)) or b"")


def read_vocabulary(client: redis.Redis, model_id: str) -> dict[str, Any]:
    raw = client.get(keys.model_vocabulary(model_id))
    if raw is None:
        raise NotFound(f"[{model_id}] Could not find vocabulary document [{model_id}_vocabulary] for model")
    vocabulary: dict[str, Any] = json.loads(raw)
    return vocabulary


def read_config(client: redis.Redis, model_id: str) -> dict[str, Any]:
    raw = client.get(keys.model_config(model_id))
    if raw is None:
        raise model_not_found(model_id)
    config: dict[str, Any] = json.loads(raw)
    return config
