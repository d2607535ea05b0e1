"""The result cache of one (deployment, node): its digests and its counters.

The cache lives in Redis under three keys of the ``{dep|node}`` hash tag (``shared.keys``:
``cache_index``, ``cache_meta``, ``cache_entries``); ``shared/lua/cache.lua`` owns every write to
them and describes the layout and the byte accounting. The gateway's ``DISPATCH`` reads it and
the worker's ``COMPLETE`` fills it (``shared.queue``, which also clears it); nothing else touches
it. Here: the digest a cached result is found by (``cache_digest``/``DigestPrefix``, docs/protocol.md
section 6) and ``CacheStats`` read back from the meta hash.

Redis memory is a budget (docs/operations-redis-memory.md): besides its own ``budget_bytes``, an
insert that would grow the cache first checks Redis's ``used_memory`` against
``memory_ceiling_bytes``; when Redis is short (counted in ``no_headroom``) the entry goes in only
in place of evicted ones, or not at all, so a cache never takes the memory queues, replies,
heartbeats and state need.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

Policy = Literal["lfu", "lru"]
POLICIES: tuple[Policy, ...] = ("lfu", "lru")


def cache_digest(*parts: bytes | str) -> str:
    """128-bit hex digest (blake2b) of the key material; each part is length-framed, so
    ``("ab", "c")`` and ``("a", "bc")`` differ. ``str`` parts are hashed as UTF-8."""
    return DigestPrefix(*parts).digest()


class DigestPrefix:
    """``cache_digest`` of leading parts hashed once: ``DigestPrefix(a, b).digest(c)`` is
    ``cache_digest(a, b, c)`` (the request path shares model, uid and config across texts)."""

    def __init__(self, *parts: bytes | str) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        _frame_into(self._hash, parts)

    def digest(self, *parts: bytes | str) -> str:
        h = self._hash.copy()
        _frame_into(h, parts)
        return h.hexdigest()


def _frame_into(h: Any, parts: tuple[bytes | str, ...]) -> None:
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int = 0
    used_bytes: int = 0
    budget_bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    stored: int = 0
    rejected_too_large: int = 0
    no_headroom: int = 0  # inserts that found Redis at its ceiling (then only replacing, or skipped)


def _int(value: Any) -> int:
    return int(float(value)) if value is not None else 0


def parse_meta(raw: Any, budget_bytes: int) -> CacheStats:
    """``CacheStats`` from an ``HGETALL`` of ``keys.cache_meta(dep, node)`` (a missing hash is all zeros)."""
    meta = {(k.decode() if isinstance(k, bytes) else k): v for k, v in (raw or {}).items()}
    return CacheStats(
        entries=_int(meta.get("entries")),
        used_bytes=_int(meta.get("bytes")),
        budget_bytes=budget_bytes,
        hits=_int(meta.get("hits")),
        misses=_int(meta.get("misses")),
        evictions=_int(meta.get("evictions")),
        stored=_int(meta.get("stored")),
        rejected_too_large=_int(meta.get("rejected_too_large")),
        no_headroom=_int(meta.get("no_headroom")),
    )
