"""Tests against a real Redis Cluster (``tests/redis_cluster.py``): one 3-master cluster for the
whole session; the failover test starts its own, with a replica per master."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import tiny_embedding_model
from tests.redis_cluster import RedisClusterProcesses, redis_cluster

__all__ = ["tiny_embedding_model"]


@pytest.fixture(scope="session")
def redis_cluster_processes() -> Iterator[RedisClusterProcesses]:
    with redis_cluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster_processes: RedisClusterProcesses) -> str:
    """The session's Redis Cluster, every master emptied."""
    redis_cluster_processes.flush()
    return redis_cluster_processes.url
