from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.redis_server import private_redis


@pytest.fixture(scope="session", autouse=True)
def model_dir() -> Iterator[Path]:
    """Worker nodes the tests start keep their model copies in a temp dir deleted after the
    session, never in the ``~/.cache/inferq/models`` of whoever runs the tests (children
    inherit the variable)."""
    with tempfile.TemporaryDirectory(prefix="inferq-models-") as path, pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFERQ_MODEL_DIR", path)
        yield Path(path)


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
