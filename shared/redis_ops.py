"""Redis work written once, run over any client: sans-IO generators of requests, and their drivers.

A typed call (``shared.queue``) is a generator that yields requests — ``Eval`` (a declared
``shared.lua.Script`` with its keys and arguments), ``Command``, ``Batch`` — and receives their
replies. ``run`` drives one over a sync client and ``arun`` over an asyncio one, plain or Redis
Cluster: on a plain Redis a ``Batch`` is one pipelined round trip and scripts go as ``EVALSHA``
(``EVAL`` once after a ``NOSCRIPT``); on a cluster, where a pipeline may not carry ``EVALSHA``
and spans shards, each script call goes on its own (the client routes it by its keys), plain
commands through the cluster pipeline (a round trip per shard), and an ``ordered`` batch one
request after the other, stopping at the first failure.

Touches no key of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import NoScriptError, RedisError

from shared.redis_conn import is_cluster

if TYPE_CHECKING:
    from shared.lua import Script

@dataclass(frozen=True)
class Eval:
    script: Script
    keys: tuple[str, ...]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Command:
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Batch:
    """Requests sent in order, in one round trip where the client allows; the reply is the list of
    their replies, a failed one as its exception. ``ordered``: on a cluster (one shard after the
    other), a request runs only if those before it succeeded; the rest get ``NotSent``."""

    requests: tuple[Eval | Command, ...]
    ordered: bool = False


class NotSent(RedisError):
    """A request of an ordered ``Batch`` not sent because one before it failed."""


Request = Eval | Command | Batch
T = TypeVar("T")
Ops = Generator[Request, Any, T]


def _evalsha_args(request: Eval) -> tuple[Any, ...]:
    return ("EVALSHA", request.script.sha, len(request.keys), *request.keys, *request.args)


def _eval_args(request: Eval) -> tuple[Any, ...]:
    return ("EVAL", request.script.source, len(request.keys), *request.keys, *request.args)


def call_sync(client: Any, request: Eval | Command) -> Any:
    """One script call or command over a sync client (EVALSHA, loaded on NOSCRIPT)."""
    if isinstance(request, Command):
        return client.execute_command(*request.args)
    try:
        return client.execute_command(*_evalsha_args(request))
    except NoScriptError:  # a new or restarted Redis: EVAL loads it
        return client.execute_command(*_eval_args(request))


async def call_async(client: Any, request: Eval | Command) -> Any:
    """One script call or command over an asyncio client (EVALSHA, loaded on NOSCRIPT)."""
    if isinstance(request, Command):
        return await client.execute_command(*request.args)
    try:
        return await client.execute_command(*_evalsha_args(request))
    except NoScriptError:
        return await client.execute_command(*_eval_args(request))


def _segments(requests: tuple[Eval | Command, ...]) -> list[list[Eval | Command]]:
    """Runs of plain commands (one cluster pipeline each), and each script call on its own."""
    segments: list[list[Eval | Command]] = []
    for request in requests:
        if isinstance(request, Command) and segments and isinstance(segments[-1][0], Command):
            segments[-1].append(request)
        else:
            segments.append([request])
    return segments


def _not_sent(replies: list[Any], count: int) -> list[Any]:
    failed = next(r for r in replies if isinstance(r, Exception))
    return [NotSent(f"not sent: {failed}") for _ in range(count)]


def _batch_sync(client: Any, batch: Batch) -> list[Any]:
    if is_cluster(client):
        replies: list[Any] = []
        for segment in _segments(batch.requests):
            if batch.ordered and any(isinstance(r, Exception) for r in replies):
                replies += _not_sent(replies, len(segment))
            elif isinstance(segment[0], Command):  # redis-py's cluster pipeline: a round trip per shard
                pipe = client.pipeline(transaction=False)
                for request in segment:
                    pipe.execute_command(*request.args)
                replies += pipe.execute(raise_on_error=False)
            else:
                try:
                    replies.append(call_sync(client, segment[0]))
                except RedisError as exc:
                    replies.append(exc)
        return replies
    pipe = client.pipeline(transaction=False)
    for request in batch.requests:
        pipe.execute_command(*(_evalsha_args(request) if isinstance(request, Eval) else request.args))
    replies = pipe.execute(raise_on_error=False)
    for i, (request, reply) in enumerate(zip(batch.requests, replies, strict=True)):
        if isinstance(reply, NoScriptError) and isinstance(request, Eval):
            try:
                replies[i] = client.execute_command(*_eval_args(request))
            except RedisError as exc:
                replies[i] = exc
    return list(replies)


async def _caught(client: Any, request: Eval | Command) -> Any:
    try:
        return await call_async(client, request)
    except RedisError as exc:
        return exc


async def _batch_async(client: Any, batch: Batch) -> list[Any]:
    if is_cluster(client):
        if not batch.ordered:  # each request to its shard, all at once
            return list(await asyncio.gather(*(_caught(client, r) for r in batch.requests)))
        replies: list[Any] = []
        for segment in _segments(batch.requests):
            if any(isinstance(r, Exception) for r in replies):
                replies += _not_sent(replies, len(segment))
            elif isinstance(segment[0], Command):
                async with client.pipeline() as pipe:
                    for request in segment:
                        pipe.execute_command(*request.args)
                    replies += await pipe.execute(raise_on_error=False)
            else:
                replies.append(await _caught(client, segment[0]))
        return replies
    async with client.pipeline(transaction=False) as pipe:
        for request in batch.requests:
            pipe.execute_command(*(_evalsha_args(request) if isinstance(request, Eval) else request.args))
        replies = await pipe.execute(raise_on_error=False)
    for i, (request, reply) in enumerate(zip(batch.requests, replies, strict=True)):
        if isinstance(reply, NoScriptError) and isinstance(request, Eval):
            replies[i] = await _caught(client, request)
    return list(replies)


def run(client: redis.Redis | redis.cluster.RedisCluster, ops: Ops[T]) -> T:
    """Drive a typed call over a sync client (plain or cluster)."""
    reply: Any = None
    try:
        while True:
            request = ops.send(reply)
            reply = _batch_sync(client, request) if isinstance(request, Batch) else call_sync(client, request)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster, ops: Ops[T]) -> T:
    """Drive a typed call over an asyncio client (plain or cluster)."""
    reply: Any = None
    try:
        while True:
            request = ops.send(reply)
            reply = await _batch_async(client, request) if isinstance(request, Batch) else await call_async(client, request)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]

