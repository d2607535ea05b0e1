"""The request path's protocol: every Lua script, its KEYS and ARGV declared once, and typed calls.

Each ``Script`` names its ``KEYS`` and ``ARGV`` as field lists. The Lua body reads them as locals
of those names (a prelude generated from the lists), the general encoder (``Script.call``) and the
hot-path packer (``Script.packer``) lay arguments out from the same lists: nothing restates an
argument's position. Every script declares every key it touches, and all of a call's keys share
one ``{dep|node}`` hash tag (``shared.keys``), so each script runs on one Redis Cluster shard.

Scripts (keys of one ``{dep|node}``: ``queue``/``bulk:queue``, ``processing:<allocation>``,
``stats``, and the result cache's ``cache:idx``/``cache:meta``/``cache:entries``):

- ``DISPATCH``: cache lookup (a hit is touched, counted and returned: no worker needed),
  else the bounded LPUSH; a full queue counts a rejection. One round trip (the gateway's
  ``ScriptPipeline`` sends many in one).
- ``TAKE``: move up to N items into an allocation's processing list (batching), at most its
  share of the queue; the interactive lane first, the bulk lane when it is empty or when the
  allocation's bounded bulk share is due (the search lane); with a budget, no more than fit
  a padded-token budget (documents x the longest estimated row).
- ``COMPLETE``: drop the processing list, cache the new results (while Redis has headroom),
  record stats: the acknowledgement.
- ``REQUEUE``: move a list's items back to a queue (an allocation's own work after a Redis error).
- ``REQUEUE_COUNTED``: the same for the work of a worker that died holding it: each request's
  delivery count goes up by one (``InferRequest.deliveries``; a worker answers a request past
  its ``max_redeliveries`` with an error instead of running it again).
- ``TAKE_ALL``: empty a queue, returning its items (cancel).
- ``REMOVE_ITEMS``: remove exactly the given items from a queue (the second half of a hand-over).
- ``CLEAR``: drop the result cache; ``AUDIT``: its accounting (tests and diagnostics);
  ``FIGURES``: one (deployment, node)'s counters, cache meta and queue lengths in one string.

Typed calls (``dispatch``, ``take``, ``complete``, ``reply``, ``finish``, ``requeue``,
``recover``, ``hand_over``, ``cancel``, ``clear``, ...) are written once, as generators of Redis
requests (``shared.redis_ops``: ``Eval``, ``Command``, ``Batch``); ``run`` drives one over a sync
client and ``arun`` over an asyncio one, plain or cluster. The ``Script`` declaration itself
(field lists, generated prelude and packer) is ``shared.lua``'s.

Replies: ``reply`` RPUSHes onto a gateway's reply list (a slot of its own) and sets its TTL
(``REPLY_TTL_S``, written here only). ``finish`` sends the replies first and acknowledges
(``COMPLETE``) after: a crash between them redelivers the requests and the gateway ignores the
duplicate replies (at-least-once; nothing lost). On a plain Redis both go in one round trip
(the server runs a pipeline in order); on a cluster, in two.

Hand-over (``hand_over``): a node's queue moved to another node's queue crosses slots, so it is
copied (``RPUSH`` of a batch onto the target), then exactly those items are removed from the
source (``REMOVE_ITEMS``). A crash in between leaves the batch in both queues: run twice, answered
twice; the gateway keeps the first reply, and the delivery count (which only a dead worker's
processing list raises) is unchanged by a hand-over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import keys
from shared.lua import Script as Script
from shared.redis_ops import Batch as Batch
from shared.redis_ops import Command as Command
from shared.redis_ops import Eval as Eval
from shared.redis_ops import NotSent as NotSent
from shared.redis_ops import Ops as Ops
from shared.redis_ops import arun as arun
from shared.redis_ops import call_async as call_async
from shared.redis_ops import call_sync as call_sync
from shared.redis_ops import is_cluster as is_cluster
from shared.redis_ops import run as run
from shared.wire import InferReply, InferRequest, WireError

REPLY_TTL_S = 120  # a gateway's reply list outlives its last push by this much
HAND_OVER_BATCH = 256  # items copied per hand-over step

DISPATCH_QUEUED, DISPATCH_HIT, DISPATCH_FULL = 0, 1, 2

# Lanes: the queue a request waits in (``keys.queue`` / ``keys.bulk_queue``).
INTERACTIVE, BULK = "interactive", "bulk"
LANES = (INTERACTIVE, BULK)


def lane_for_input_type(input_type: str | None) -> str:
    """The lane of an inference-endpoint call: ``ingest`` is bulk; ``search``, unset and the
    rest are interactive."""
    return BULK if input_type is not None and input_type.lower() == "ingest" else INTERACTIVE


def lane_queue(deployment_id: str, node_id: str, lane: str) -> str:
    return keys.bulk_queue(deployment_id, node_id) if lane == BULK else keys.queue(deployment_id, node_id)


# ---- the scripts: fields declared once ------------------------------------------------------

DISPATCH = Script(
    "dispatch",
    keys=("queue", "stats", "cache_index", "cache_meta", "cache_entries"),
    argv=("digest", "policy", "now_ms", "start_ms", "capacity", "payload", "count_rejection"),
    fragments=("cache", "stats", "queue"),
    returns="{0} queued, {1, value} cache hit, {2} full (count_rejection 1: counted as a rejection)",
    body="""
local now, start = tonumber(now_ms), tonumber(start_ms)
if digest ~= '' then
  local value = cache_get(cache_index, cache_meta, cache_entries, digest, policy, now)
  if value then
    stats_record(stats, start, now, 1, 1, 0, 0, 0)
    return {1, value}
  end
end
if queue_push_bounded(queue, tonumber(capacity), payload) == 1 then
  return {0}
end
if count_rejection == '1' then
  stats_incr(stats, 'rejected_execution_count', 1)
end
return {2}
""",
)

TAKE = Script(
    "take",
    keys=("queue", "processing", "bulk_queue"),
    argv=("n", "peers", "bulk_n", "bulk_first", "budget_tokens", "overhead_bytes", "bytes_per_token", "max_row_tokens"),
    fragments=("queue",),
    returns="{interactive items, bulk items, interactive left, bulk left}; the items are in the processing list",
    # The search lane: up to n interactive items, but no more than a 1/peers share of what is
    # queued; only when there are none (or bulk_first, the allocation's bounded bulk share) up to
    # bulk_n bulk items, at most a 1/peers share of the bulk lane. A take never mixes the lanes.
    # budget_tokens > 0: a lane's take also stops before items x the longest estimated row would
    # pass the budget (workers.batch_plan.TokenEstimate; shared/lua/queue.lua queue_take_tokens).
    body="""
local most, share_of = tonumber(n), tonumber(peers)
local budget = tonumber(budget_tokens)
local function share(key, count)
  local queued = redis.call('LLEN', key)
  if share_of > 1 then count = math.min(count, math.ceil(queued / share_of)) end
  return math.min(count, queued), queued
end
local function take(key, count)
  if budget > 0 then
    return queue_take_tokens(key, processing, count, budget, tonumber(overhead_bytes), tonumber(bytes_per_token),
      tonumber(max_row_tokens))
  end
  return queue_take(key, processing, count)
end
local interactive, bulk = {}, {}
local ni, li = share(queue, most)
local nb, lb = share(bulk_queue, tonumber(bulk_n))
if nb > 0 and (ni == 0 or bulk_first == '1') then
  bulk = take(bulk_queue, nb)
else
  interactive = take(queue, ni)
end
return {interactive, bulk, li - #interactive, lb - #bulk}
""",
)

COMPLETE = Script(
    "complete",
    keys=("stats", "processing", "cache_index", "cache_meta", "cache_entries"),
    argv=("budget_bytes", "policy", "now_ms", "start_ms", "results", "time_ms_sum", "errors", "memory_ceiling_bytes", "n_stats"),
    fragments=("cache", "stats"),
    more_argv="n_stats stats field/increment pairs (histograms, shared.histograms), then digest/value pairs to cache",
    returns="1",
    # The processing list goes first: a write that frees memory, so the bookkeeping after it is never
    # refused for memory (Redis checks maxmemory only before a script's first write), and the cache
    # inserts grow Redis only under the ceiling (cache.lua), never into what queues and state need.
    body="""
local budget, now = tonumber(budget_bytes), tonumber(now_ms)
redis.call('DEL', processing)
local first_pair = stats_add(stats, ARGV, first_more_arg, tonumber(n_stats))
if budget > 0 then
  local headroom = cache_headroom(memory_ceiling_bytes, now)
  for i = first_pair, #ARGV, 2 do
    cache_put(cache_index, cache_meta, cache_entries, ARGV[i], ARGV[i + 1], budget, policy, now, headroom)
  end
  cache_save_headroom(headroom, cache_meta)
elseif #ARGV >= first_pair then
  cache_trim(cache_index, cache_meta, cache_entries, 0, 64)  -- the budget went to 0: empty the cache, a little per batch
end
if tonumber(results) > 0 or tonumber(errors) > 0 then
  stats_record(stats, tonumber(start_ms), now, tonumber(results), 0, tonumber(time_ms_sum), tonumber(time_ms_sum),
    tonumber(errors))
end
return 1
""",
)

REQUEUE = Script(
    "requeue", keys=("source", "queue"), argv=(), fragments=("queue",), returns="the number of items moved",
    body="return queue_requeue(source, queue)",
)  # fmt: skip

REQUEUE_COUNTED = Script(
    "requeue_counted", keys=("source", "queue"), argv=(), fragments=("queue",), returns="the number of items moved",
    body="return queue_requeue_counted(source, queue)",
)  # fmt: skip

TAKE_ALL = Script(
    "take_all", keys=("queue",), argv=(), returns="every item of the queue, which is deleted",
    body="local items = redis.call('LRANGE', queue, 0, -1)\nredis.call('DEL', queue)\nreturn items",
)  # fmt: skip

REMOVE_ITEMS = Script(
    "remove_items",
    keys=("queue",),
    argv=(),
    more_argv="the items to remove (each once, searched from the head, where a hand-over reads them)",
    returns="the number removed",
    body="""
local removed = 0
for i = first_more_arg, #ARGV do
  removed = removed + redis.call('LREM', queue, 1, ARGV[i])
end
return removed
""",
)

CLEAR = Script(
    "clear", keys=("cache_index", "cache_meta", "cache_entries"), argv=(), fragments=("cache",),
    returns="the number of entries dropped", body="return cache_clear(cache_index, cache_meta, cache_entries)",
)  # fmt: skip

AUDIT = Script(
    "audit", keys=("cache_index", "cache_meta"), argv=(), fragments=("cache",),
    returns="{meta.bytes, sum of the footprints recorded in the index, meta.entries, ZCARD index}",
    body="return cache_audit(cache_index, cache_meta)",
)  # fmt: skip

FIGURES = Script(
    "figures",
    keys=("stats", "cache_meta", "queue", "bulk_queue"),
    argv=(),
    more_keys="the allocations' processing lists",
    returns="msgpack [stats HGETALL flat, meta HGETALL flat, queue length, bulk length, summed processing lengths]",
    body="""
local in_flight = 0
for i = first_more_key, #KEYS do
  in_flight = in_flight + redis.call('LLEN', KEYS[i])
end
return cmsgpack.pack({redis.call('HGETALL', stats), redis.call('HGETALL', cache_meta),
  redis.call('LLEN', queue), redis.call('LLEN', bulk_queue), in_flight})
""",
)

SCRIPTS: tuple[Script, ...] = (
    DISPATCH, TAKE, COMPLETE, REQUEUE, REQUEUE_COUNTED, TAKE_ALL, REMOVE_ITEMS, CLEAR, AUDIT, FIGURES,
)  # fmt: skip


def cache_keys(deployment_id: str, node_id: str) -> tuple[str, str, str]:
    return (
        keys.cache_index(deployment_id, node_id),
        keys.cache_meta(deployment_id, node_id),
        keys.cache_entries(deployment_id, node_id),
    )


def _raise_first(replies: Iterable[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


# ---- dispatch -----------------------------------------------------------------------------------


def dispatch_keys(deployment_id: str, node_id: str, lane: str = INTERACTIVE) -> tuple[str, ...]:
    """``DISPATCH``'s KEYS for one (deployment, node, lane)."""
    return (lane_queue(deployment_id, node_id, lane), keys.stats(deployment_id, node_id), *cache_keys(deployment_id, node_id))


def dispatch_head(deployment_id: str, node_id: str, lane: str = INTERACTIVE) -> bytes:
    """The packed start of a ``DISPATCH`` call (the gateway caches it per (deployment, node, lane))."""
    return DISPATCH.head(dispatch_keys(deployment_id, node_id, lane))


def dispatch_argv(
    digest: str, policy: str, now_ms: int, start_ms: int, capacity: int, payload: bytes, count_rejection: bool
) -> bytes:
    """``DISPATCH``'s ARGV packed, for a call started by ``dispatch_head``."""
    return _pack_dispatch(
        digest.encode(), policy.encode(), b"%d" % now_ms, b"%d" % start_ms, b"%d" % capacity, payload,
        b"1" if count_rejection else b"0",
    )  # fmt: skip


_pack_dispatch = DISPATCH.packer.pack


def dispatch_values(
    digest: str, policy: str, now_ms: int, start_ms: int, capacity: int, payload: bytes, count_rejection: bool
) -> tuple[Any, ...]:
    """``dispatch_argv``'s values unpacked (clients that route each call themselves: a cluster)."""
    return (digest, policy, now_ms, start_ms, capacity, payload, 1 if count_rejection else 0)


@dataclass(frozen=True)
class DispatchOutcome:
    code: int  # DISPATCH_QUEUED, DISPATCH_HIT or DISPATCH_FULL
    value: bytes | None = None  # the cached result on a hit


def dispatch_outcome(reply: Sequence[Any]) -> DispatchOutcome:
    code = int(reply[0])
    return DispatchOutcome(code, _bytes(reply[1]) if code == DISPATCH_HIT else None)


def dispatch(
    deployment_id: str,
    node_id: str,
    *,
    digest: str,
    payload: bytes,
    capacity: int,
    now_ms: int,
    start_ms: int = 0,
    policy: str = "lfu",
    lane: str = INTERACTIVE,
    count_rejection: bool = True,
) -> Ops[DispatchOutcome]:
    """One ``DISPATCH``: a cache hit, or the payload queued, or the queue full. ``capacity=0``
    makes it a pure cache lookup (a miss queues nothing)."""
    values = dispatch_values(digest, policy, now_ms, start_ms, capacity, payload, count_rejection and capacity > 0)
    return dispatch_outcome((yield DISPATCH.call(dispatch_keys(deployment_id, node_id, lane), values)))


# ---- take, reply, complete ------------------------------------------------------------------------


@dataclass(frozen=True)
class TakeArgs:
    n: int
    peers: int = 1
    bulk_n: int = 0
    bulk_first: bool = False
    budget_tokens: int = 0  # 0: count only; else the token estimate below applies
    overhead_bytes: int = 0
    bytes_per_token: float = 1.0
    max_row_tokens: int = 512

    def values(self) -> tuple[Any, ...]:
        return (self.n, self.peers, self.bulk_n, 1 if self.bulk_first else 0, self.budget_tokens,
                self.overhead_bytes, round(self.bytes_per_token, 3), self.max_row_tokens)  # fmt: skip


@dataclass(frozen=True)
class Taken:
    interactive: list[bytes]
    bulk: list[bytes]
    interactive_left: int
    bulk_left: int

    @property
    def items(self) -> list[bytes]:
        return self.interactive + self.bulk


def take(
    deployment_id: str, node_id: str, allocation: str, args: TakeArgs, *, wait_s: float = 0.0, wait_lane: str = INTERACTIVE
) -> Ops[Taken]:
    """``TAKE`` the next batch into the allocation's processing list. ``wait_s > 0``: first wait
    (up to that long) for an item on ``wait_lane``'s queue (``BLMOVE`` of the queue onto itself
    only watches it), in the same round trip as the take on a plain Redis. ``args.n`` 0 takes
    from the bulk lane only (an allocation's bulk lane, ``workers.allocation``)."""
    queue = keys.queue(deployment_id, node_id)
    call = TAKE.call((queue, keys.processing(deployment_id, node_id, allocation), keys.bulk_queue(deployment_id, node_id)), args.values())
    if wait_s > 0:
        watched_queue = lane_queue(deployment_id, node_id, wait_lane)
        watched, result = yield Batch((Command(("BLMOVE", watched_queue, watched_queue, "RIGHT", "RIGHT", wait_s)), call))
        _raise_first((watched, result))
    else:
        result = yield call
    return Taken([_bytes(i) for i in result[0]], [_bytes(i) for i in result[1]], int(result[2]), int(result[3]))


def watch(deployment_id: str, node_id: str, wait_s: float) -> Ops[bool]:
    """Wait up to ``wait_s`` for an item on the interactive queue; True if one is there."""
    queue = keys.queue(deployment_id, node_id)
    return (yield Command(("BLMOVE", queue, queue, "RIGHT", "RIGHT", wait_s))) is not None


@dataclass(frozen=True)
class Completion:
    """``COMPLETE``'s values: the acknowledgement of a batch, its stats and results to cache."""

    budget_bytes: int
    policy: str
    now_ms: int
    start_ms: int
    results: int
    time_ms_sum: float
    errors: int
    memory_ceiling_bytes: int = 0
    stats: Mapping[str, float] = field(default_factory=dict)  # field -> increment (histograms)
    cache_pairs: Sequence[bytes | str] = ()  # digest, value, digest, value, ...

    def call(self, deployment_id: str, node_id: str, allocation: str) -> Eval:
        return COMPLETE.call(
            (keys.stats(deployment_id, node_id), keys.processing(deployment_id, node_id, allocation),
             *cache_keys(deployment_id, node_id)),
            (self.budget_bytes, self.policy, self.now_ms, self.start_ms, self.results, self.time_ms_sum, self.errors,
             self.memory_ceiling_bytes, len(self.stats)),
            more_args=(*(x for pair in self.stats.items() for x in pair), *self.cache_pairs),
        )  # fmt: skip


def complete(deployment_id: str, node_id: str, allocation: str, completion: Completion) -> Ops[None]:
    """Acknowledge a batch (after its replies were sent: ``finish``)."""
    yield completion.call(deployment_id, node_id, allocation)


def _reply_commands(replies: Iterable[tuple[str, bytes]]) -> list[Command]:
    """One RPUSH (and its TTL) per reply list."""
    by_list: dict[str, list[bytes]] = {}
    for reply_to, one in replies:
        by_list.setdefault(reply_to, []).append(one)
    commands: list[Command] = []
    for key, packed in by_list.items():
        commands += [Command(("RPUSH", key, *packed)), Command(("EXPIRE", key, REPLY_TTL_S))]
    return commands


def reply(replies: Iterable[tuple[str, bytes]]) -> Ops[list[Exception]]:
    """Push packed replies onto their reply lists ((reply_to, packed) pairs). Returns the errors."""
    commands = _reply_commands(replies)
    if not commands:
        return []
    results = yield Batch(tuple(commands))
    return [r for r in results if isinstance(r, Exception)]


def finish(
    deployment_id: str, node_id: str, allocation: str, replies: Iterable[tuple[str, bytes]], completion: Completion
) -> Ops[list[Exception]]:
    """The last replies, then ``COMPLETE``: replies first, so a crash between them redelivers
    (duplicate replies are ignored) instead of losing one. On a plain Redis one round trip (the
    server runs a pipeline in order); the errors are returned, not raised (a failed cache write
    or stats update must not fail the requests), except when the acknowledgement was not made
    (``NotSent``, a lost connection): then it is raised, and the caller requeues its work."""
    results = yield Batch((*_reply_commands(replies), completion.call(deployment_id, node_id, allocation)), ordered=True)
    if isinstance(results[-1], (NotSent, redis.ConnectionError, redis.TimeoutError)):
        raise results[-1]
    return [r for r in results if isinstance(r, Exception)]


def reply_errors(items: Iterable[bytes], error: Mapping[str, Any], node_id: str = "") -> Ops[int]:
    """Answer queued requests (packed ``InferRequest``s) with ``error``; returns how many."""
    replies: list[tuple[str, bytes]] = []
    for raw in items:
        try:
            request = InferRequest.unpack(raw)
        except WireError:
            continue
        replies.append((request.reply_to, InferReply(id=request.id, node=node_id, error=dict(error)).pack()))
    yield from reply(replies)
    return len(replies)


# ---- requeue, hand-over, cancel ----------------------------------------------------------------


def requeue(deployment_id: str, node_id: str, allocation: str) -> Ops[int]:
    """Put an allocation's own processing list back on its queue (after a Redis error)."""
    source = keys.processing(deployment_id, node_id, allocation)
    return int((yield REQUEUE.call((source, keys.queue(deployment_id, node_id)), ())))


def allocations(deployment_id: str, node_id: str) -> Ops[list[str]]:
    """The allocation names with a processing list on the node (``keys.dn_allocations``)."""
    names = yield Command(("SMEMBERS", keys.dn_allocations(deployment_id, node_id)))
    return sorted(_bytes(n).decode() for n in names)


def index_allocation(deployment_id: str, node_id: str, allocation: str) -> Ops[None]:
    """Record an allocation's processing list where the control plane and a restarted node find
    it (``dn_allocations`` in the dn slot; the two control-plane indexes in ``{control}``)."""
    results = yield Batch((
        Command(("SADD", keys.dn_allocations(deployment_id, node_id), allocation)),
        Command(("SADD", keys.node_deployments(node_id), deployment_id)),
        Command(("SADD", keys.deployment_nodes(deployment_id), node_id)),
    ))  # fmt: skip
    _raise_first(results)


def recover(deployment_id: str, node_id: str) -> Ops[int]:
    """Put back on the node's queue (served next) what its allocations held when their process
    died, each request counting one more delivery. Returns the number of items moved."""
    names = yield from allocations(deployment_id, node_id)
    queue = keys.queue(deployment_id, node_id)
    moved = 0
    for name in names:
        moved += int((yield REQUEUE_COUNTED.call((keys.processing(deployment_id, node_id, name), queue), ())))
    return moved


def hand_over(deployment_id: str, source_node: str, target_node: str, lanes: Sequence[str] = LANES) -> Ops[int]:
    """Move the queued requests of ``source_node`` to ``target_node``'s queues (same lane), to be
    served next there, oldest first. Crash-safe across slots: each batch is copied onto the target,
    then exactly those items are removed from the source; a crash in between duplicates a batch,
    never loses one (module docstring). Returns the number of items moved."""
    moved = 0
    for lane in lanes:
        source, target = lane_queue(deployment_id, source_node, lane), lane_queue(deployment_id, target_node, lane)
        while True:
            # the newest first: the target's right end is served next, so each older batch pushed
            # after a newer one is served before it
            items = yield Command(("LRANGE", source, 0, HAND_OVER_BATCH - 1))
            if not items:
                break
            yield Command(("RPUSH", target, *items))
            removed = int((yield REMOVE_ITEMS.call((source,), (), more_args=items)))
            moved += len(items)
            if removed == 0:  # taken by someone else meanwhile: they are served; stop here
                break
    return moved


def cancel(deployment_id: str, node_id: str, error: Mapping[str, Any]) -> Ops[int]:
    """Answer every queued (not yet taken) request of the node, both lanes, with ``error``."""
    cancelled = 0
    for lane in LANES:
        items = yield TAKE_ALL.call((lane_queue(deployment_id, node_id, lane),), ())
        cancelled += yield from reply_errors([_bytes(i) for i in items], error)
    return cancelled


def clear(deployment_id: str, node_id: str) -> Ops[int]:
    """Drop the (deployment, node) result cache; safe while others use it. Returns the entries dropped."""
    return int((yield CLEAR.call(cache_keys(deployment_id, node_id), ())))


def drop(deployment_id: str, node_id: str) -> Ops[None]:
    """Delete every per-node key of the deployment (its processing lists found through
    ``dn_allocations``) and its entry in the node's ``node_deployments`` index."""
    names = yield from allocations(deployment_id, node_id)
    yield from clear(deployment_id, node_id)
    results = yield Batch((
        Command(("UNLINK", *keys.dn_keys(deployment_id, node_id),
                 *(keys.processing(deployment_id, node_id, n) for n in names))),
        Command(("SREM", keys.node_deployments(node_id), deployment_id)),
    ))  # fmt: skip
    _raise_first(results)


def count_timeouts(deployment_id: str, nodes: Sequence[str]) -> Ops[None]:
    """One ``timeout_count`` per node listed (a node twice counts two)."""
    if nodes:
        results = yield Batch(tuple(Command(("HINCRBY", keys.stats(deployment_id, n), "timeout_count", 1)) for n in nodes))
        _raise_first(results)


# ---- readers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSample:
    """One (deployment, node)'s stats hash and what waits in its two queues."""

    stats: dict[Any, Any]
    queued: int


def samples(deployment_id: str, nodes: Sequence[str]) -> Ops[dict[str, NodeSample]]:
    requests: list[Eval | Command] = []
    for node in nodes:
        requests += [
            Command(("HGETALL", keys.stats(deployment_id, node))),
            Command(("LLEN", keys.queue(deployment_id, node))),
            Command(("LLEN", keys.bulk_queue(deployment_id, node))),
        ]
    if not requests:
        return {}
    replies = yield Batch(tuple(requests))
    _raise_first(replies)
    return {
        node: NodeSample(_hash(replies[3 * i]), int(replies[3 * i + 1]) + int(replies[3 * i + 2]))
        for i, node in enumerate(nodes)
    }


def queued(deployment_id: str, node_id: str) -> Ops[int]:
    """Requests waiting in the node's two queues."""
    replies = yield Batch(tuple(Command(("LLEN", lane_queue(deployment_id, node_id, lane))) for lane in LANES))
    _raise_first(replies)
    return sum(int(r) for r in replies)


def _hash(raw: Any) -> dict[Any, Any]:
    if isinstance(raw, dict):
        return raw
    items = list(raw or [])
    return {items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}


def allocations_command(deployment_id: str, node_id: str) -> Command:
    """``SMEMBERS`` of ``dn_allocations``, for a reader's own ``Batch`` (then ``figures_call``)."""
    return Command(("SMEMBERS", keys.dn_allocations(deployment_id, node_id)))


def figures_call(deployment_id: str, node_id: str, allocation_names: Iterable[Any]) -> Eval:
    """``FIGURES`` of one (deployment, node), for a reader's own ``Batch``; ``allocation_names``:
    the ``allocations_command`` reply."""
    d, n = deployment_id, node_id
    lists = [keys.processing(d, n, _bytes(a).decode()) for a in sorted(_bytes(a) for a in allocation_names)]
    return FIGURES.call((keys.stats(d, n), keys.cache_meta(d, n), keys.queue(d, n), keys.bulk_queue(d, n)), (), more_keys=lists)


CACHE_META_FIELDS = ("bytes", "entries", "no_headroom")


def cache_meta(pairs: Sequence[tuple[str, str]], fields: Sequence[str] = CACHE_META_FIELDS) -> Ops[list[list[Any]]]:
    """``HMGET`` of the cache meta hash of each (deployment, node)."""
    if not pairs:
        return []
    replies = yield Batch(tuple(Command(("HMGET", keys.cache_meta(d, n), *fields)) for d, n in pairs))
    _raise_first(replies)
    return [list(r) for r in replies]


def in_flight(deployment_id: str, nodes: Sequence[str]) -> Ops[dict[str, int]]:
    """Items held in the allocations' processing lists, per node (two round trips)."""
    counts = {node: 0 for node in nodes}
    if not nodes:
        return counts
    names = yield Batch(tuple(allocations_command(deployment_id, node) for node in nodes))
    _raise_first(names)
    lists = [
        (node, keys.processing(deployment_id, node, _bytes(a).decode()))
        for node, allocation_names in zip(nodes, names, strict=True)
        for a in sorted(allocation_names)
    ]
    if lists:
        replies = yield Batch(tuple(Command(("LLEN", key)) for _, key in lists))
        _raise_first(replies)
        for (node, _), n in zip(lists, replies, strict=True):
            counts[node] += int(n)
    return counts


def audit(deployment_id: str, node_id: str) -> Ops[tuple[int, int, int, int]]:
    """(meta.bytes, sum of the recorded footprints, meta.entries, indexed entries)."""
    keys_ = cache_keys(deployment_id, node_id)[:2]
    accounted, recorded, entries, indexed = yield AUDIT.call(keys_, ())
    return int(accounted), int(recorded), int(entries), int(indexed)
