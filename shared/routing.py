"""Which node serves a document (pure).

Weighted rendezvous hashing over the deployment's started routes: the same cache digest
always ranks the nodes in the same order (cache affinity: N per-node caches act as one
cache N times the size), and each node wins in proportion to its allocations. The ranking
is also the fallback order when the first node's queue is full. A request without a digest
(cache off) gets a random key, so load spreads by allocations as Elasticsearch does.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping


def _unit_interval(digest: str, node_id: str) -> float:
    h = hashlib.blake2b(f"{digest}\x00{node_id}".encode(), digest_size=8).digest()
    value = int.from_bytes(h, "big")
    return (value + 1) / (2**64 + 1)  # in (0, 1)


def rank_nodes(weights: Mapping[str, int], digest: str | None) -> list[str]:
    """Nodes with weight > 0, best first, for this digest (weighted rendezvous hashing)."""
    if len(weights) == 1:
        ((node_id, weight),) = weights.items()
        return [node_id] if weight > 0 else []
    key = digest if digest else os.urandom(8).hex()
    scored: list[tuple[float, str]] = []
    for node_id, weight in weights.items():
        if weight <= 0:
            continue
        score = -weight / math.log(_unit_interval(key, node_id))
        scored.append((score, node_id))
    scored.sort(reverse=True)
    return [node_id for _, node_id in scored]
