"""Redis URLs: one Redis or a Redis Cluster, and the plain Redis RQ's bulk jobs need."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio.cluster as aiocluster

from inferq.cli import main as cli_main
from shared.redis_conn import (
    RedisUrlError,
    async_client,
    is_cluster,
    is_cluster_url,
    parse_cluster_url,
    redact_url,
    sync_client,
)
from shared.settings import BulkSettings, GatewaySettings, WorkerSettings


def test_cluster_urls_are_told_apart_from_plain_ones() -> None:
    assert is_cluster_url("redis+cluster://10.0.0.1:7000")
    assert is_cluster_url("REDISS+CLUSTER://h:7000")
    for plain in ("redis://h:6379/0", "rediss://h:6380", "unix:///run/redis.sock", "redis+sentinel://h:26379"):
        assert not is_cluster_url(plain)


def test_a_cluster_url_names_its_startup_nodes_and_keeps_credentials_tls_and_options() -> None:
    parsed = parse_cluster_url("rediss+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2,[::1]:7002/0?ssl_cert_reqs=none")
    assert parsed.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert parsed.plain_url == "rediss://app:s%40cret@10.0.0.1:7000/0?ssl_cert_reqs=none"
    assert parse_cluster_url("redis+cluster://h:7000").plain_url == "redis://h:7000"


@pytest.mark.parametrize(
    "url", ["redis+cluster://h:7000/3", "redis+cluster://:pw@/0", "redis://h:6379", "redis+cluster://h:x"]
)
def test_bad_cluster_urls_are_refused_without_showing_a_password(url: str) -> None:
    with pytest.raises((RedisUrlError, ValueError)) as refused:
        parse_cluster_url(url)
    assert "pw" not in str(refused.value)


def test_passwords_are_redacted() -> None:
    assert redact_url("redis+cluster://app:secret@h:7000") == "redis+cluster://app:***@h:7000"
    assert redact_url("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


async def test_the_factories_give_cluster_clients_for_cluster_urls_and_connect_lazily() -> None:
    plain, cluster = async_client("redis://127.0.0.1:1/0"), async_client("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    try:
        assert not is_cluster(plain) and isinstance(plain, redis.asyncio.Redis)
        assert is_cluster(cluster) and isinstance(cluster, aiocluster.RedisCluster)
        assert is_cluster(cluster.pipeline())
        blocking = async_client("redis+cluster://127.0.0.1:1", blocking=True)
        assert blocking.connection_kwargs["socket_timeout"] is None  # type: ignore[attr-defined]
        await blocking.aclose()
    finally:
        await plain.aclose()
        await cluster.aclose()
    sync_plain = sync_client("redis://127.0.0.1:1/0")
    assert not is_cluster(sync_plain)
    sync_plain.close()
    with pytest.raises(redis.RedisError):  # the sync cluster client reads the slot map at once
        sync_client("redis+cluster://127.0.0.1:1")


def test_every_server_setting_reads_the_same_redis_url() -> None:
    env = {"INFERQ_REDIS_URL": "redis+cluster://h:7000"}
    assert GatewaySettings.from_env(env).redis_url == WorkerSettings.from_env(env).redis_url == "redis+cluster://h:7000"
    assert BulkSettings.from_env(env).redis_url == "redis+cluster://h:7000"
    assert GatewaySettings.from_env({"REDIS_URL": "redis://h:1/2"}).redis_url == "redis://h:1/2"


def test_rq_gets_a_plain_redis_and_a_clear_error_for_a_cluster() -> None:
    assert BulkSettings("redis://h:6379/0").rq_url() == "redis://h:6379/0"
    assert BulkSettings("redis+cluster://h:7000", "redis://rq:6379/0").rq_url() == "redis://rq:6379/0"
    with pytest.raises(RedisUrlError, match="set INFERQ_BULK_REDIS_URL"):
        BulkSettings("redis+cluster://app:secret@h:7000").rq_url()
    with pytest.raises(RedisUrlError, match="is a Redis Cluster") as refused:
        BulkSettings("redis://h:6379/0", "redis+cluster://app:secret@h:7000").rq_url()
    assert "secret" not in str(refused.value)


def test_the_bulk_worker_refuses_a_cluster_url_for_rq(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli_main(["bulk-worker", "--redis-url", "redis+cluster://127.0.0.1:1"], env={})
    assert status == 2
    assert "INFERQ_BULK_REDIS_URL" in capsys.readouterr().err
