from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.redis_server import private_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on a flushed database (for tests that own the whole Redis)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
