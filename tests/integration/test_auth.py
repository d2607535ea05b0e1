"""API keys with privileges, end to end: a gateway with ``INFERQ_AUTH=on`` and a bootstrap key,
a real worker, keys created over ``/_security/api_key``, and the official 9.x client's
exception classes for 401/403. Plus the cost of verification in Redis round trips."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from gateway.api_keys import ApiKeyStore, Credentials, VerifiedCache, new_record
from shared import keys
from tests.clients.install import ensure
from tests.cluster import LocalCluster, local_cluster
from tests.redis_server import redis_server_process

pytestmark = pytest.mark.slow

BOOTSTRAP = "boot-id:boot-secret-0123456789"
BOOT = base64.b64encode(BOOTSTRAP.encode()).decode()
ML = "/_ml/trained_models"


def request(
    cluster: LocalCluster, method: str, path: str, body: Any = None, *, auth: str | None = None, scheme: str = "ApiKey"
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = f"{scheme} {auth}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cluster.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), json.loads(raw) if raw else None


def create_key(cluster: LocalCluster, name: str, privileges: list[str] | None, *, auth: str = BOOT, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, **extra}
    if privileges is not None:
        body["role_descriptors"] = {"role": {"cluster": privileges}}
    status, _, created = request(cluster, "POST", "/_security/api_key", body, auth=auth)
    assert status == 200, created
    assert isinstance(created, dict)
    return created


@pytest.fixture(scope="module")
def secured(redis_url: str) -> Iterator[LocalCluster]:
    env = {"INFERQ_AUTH": "on", "INFERQ_BOOTSTRAP_API_KEY": BOOTSTRAP}
    with local_cluster(redis_url, nodes=[("node-1", 2)], env=env) as running:
        yield running


@pytest.fixture(scope="module")
def deployed(secured: LocalCluster, tiny_embedding_model: Any) -> str:
    """The tiny model, uploaded by inferq's importer with a manage_ml key, then started."""
    from inferq.importer import RestClient, upload

    admin = create_key(secured, "uploader", ["manage_ml"])["encoded"]
    upload(RestClient(secured.url, api_key=admin), "secured-emb", tiny_embedding_model.config,
           tiny_embedding_model.torchscript, tiny_embedding_model.vocabulary, progress=False)
    status, _, body = request(secured, "POST", f"{ML}/secured-emb/deployment/_start", auth=admin)
    assert status == 200, body
    return "secured-emb"


def test_root_stays_open(secured: LocalCluster) -> None:
    status, headers, body = request(secured, "GET", "/")
    assert status == 200 and body["version"]["number"].startswith("9.")
    assert headers["X-Elastic-Product"] == "Elasticsearch"


@pytest.mark.parametrize(
    ("auth", "scheme"),
    [(None, "ApiKey"), ("bm9wZTpub3Bl", "ApiKey"), ("!!", "ApiKey"), (base64.b64encode(b"boot-id:boot-secret-wrong").decode(), "ApiKey"),
     ("dG9rZW4=", "Bearer"), (base64.b64encode(b"elastic:wrong").decode(), "Basic")],
    ids=["missing", "unknown-key", "not-base64", "wrong-secret", "bearer", "basic-wrong-password"],
)
def test_bad_credentials_are_401_with_www_authenticate(secured: LocalCluster, auth: str | None, scheme: str) -> None:
    status, headers, body = request(secured, "GET", ML, auth=auth, scheme=scheme)
    assert status == 401
    assert body["error"]["type"] == "security_exception" and body["status"] == 401
    assert body["error"]["root_cause"][0]["type"] == "security_exception"
    assert "ApiKey" in headers["WWW-Authenticate"]
    assert headers["X-Elastic-Product"] == "Elasticsearch"
    assert headers["Content-Type"].startswith("application/json")


def test_unknown_route_needs_credentials_too(secured: LocalCluster) -> None:
    assert request(secured, "GET", "/_nowhere")[0] == 401
    assert request(secured, "GET", "/_nowhere", auth=BOOT)[0] == 400


def test_bootstrap_key_and_basic_user(secured: LocalCluster) -> None:
    status, _, body = request(secured, "GET", "/_security/_authenticate", auth=BOOT)
    assert status == 200
    assert body["username"] == "elastic" and body["authentication_type"] == "api_key"
    assert body["api_key"] == {"id": "boot-id", "name": "bootstrap"}
    basic = base64.b64encode(f"elastic:{BOOTSTRAP.split(':', 1)[1]}".encode()).decode()
    status, _, body = request(secured, "GET", "/_security/_authenticate", auth=basic, scheme="Basic")
    assert status == 200 and body["authentication_type"] == "realm" and body["roles"] == ["superuser"]
    assert request(secured, "GET", ML, auth=basic, scheme="Basic")[0] == 200


def test_created_key_is_stored_hashed(secured: LocalCluster) -> None:
    created = create_key(secured, "monitor", ["monitor_ml"])
    assert set(created) == {"id", "name", "api_key", "encoded"}
    assert base64.b64decode(created["encoded"]).decode() == f"{created['id']}:{created['api_key']}"
    client = redis.Redis.from_url(secured.redis_url)
    try:
        raw = client.hget(keys.API_KEYS, created["id"])
    finally:
        client.close()
    assert raw is not None and created["api_key"].encode() not in raw
    status, _, body = request(secured, "GET", "/_security/_authenticate", auth=created["encoded"])
    assert status == 200 and body["api_key"] == {"id": created["id"], "name": "monitor"}
    status, _, listed = request(secured, "GET", f"/_security/api_key?id={created['id']}", auth=BOOT)
    assert status == 200 and [k["name"] for k in listed["api_keys"]] == ["monitor"]
    assert "api_key" not in listed["api_keys"][0] and "hash" not in json.dumps(listed)


def test_monitor_ml_may_read_and_infer_but_not_manage(secured: LocalCluster, deployed: str) -> None:
    monitor = create_key(secured, "reader", ["monitor_ml"])
    assert request(secured, "GET", f"{ML}/{deployed}", auth=monitor["encoded"])[0] == 200
    assert request(secured, "GET", f"{ML}/{deployed}/_stats", auth=monitor["encoded"])[0] == 200
    status, _, body = request(secured, "POST", f"{ML}/{deployed}/_infer", {"docs": [{"text_field": "hello"}]}, auth=monitor["encoded"])
    assert status == 200 and len(body["inference_results"]) == 1
    status, headers, body = request(secured, "POST", f"{ML}/{deployed}/deployment/_stop", auth=monitor["encoded"])
    assert status == 403 and body["error"]["type"] == "security_exception"
    assert body["error"]["reason"].startswith(
        f"action [cluster:admin/xpack/ml/trained_models/deployment/stop] is unauthorized for API key id "
        f"[{monitor['id']}] of user [elastic]"
    )
    assert "manage_ml" in body["error"]["reason"]
    assert headers["X-Elastic-Product"] == "Elasticsearch"
    assert request(secured, "PUT", f"{ML}/other", {"inference_config": {}}, auth=monitor["encoded"])[0] == 403
    assert request(secured, "DELETE", f"{ML}/{deployed}", auth=monitor["encoded"])[0] == 403
    assert request(secured, "POST", "/_security/api_key", {"name": "x"}, auth=monitor["encoded"])[0] == 403


def test_manage_ml_manages_but_not_security(secured: LocalCluster, deployed: str) -> None:
    manager = create_key(secured, "manager", ["manage_ml"])
    status, _, body = request(secured, "POST", f"{ML}/{deployed}/_infer", {"docs": [{"text_field": "hi"}]}, auth=manager["encoded"])
    assert status == 200
    assert request(secured, "POST", f"{ML}/{deployed}/deployment/cache/_clear", auth=manager["encoded"])[0] == 200
    status, _, body = request(secured, "POST", "/_security/api_key", {"name": "x"}, auth=manager["encoded"])
    assert status == 403 and "cluster:admin/xpack/security/api_key/create" in body["error"]["reason"]


def test_a_key_cannot_outgrow_its_creator(secured: LocalCluster, deployed: str) -> None:
    security_admin = create_key(secured, "sec", ["manage_security"])
    wider = create_key(secured, "wider", ["all"], auth=security_admin["encoded"])
    assert request(secured, "GET", "/_security/_authenticate", auth=wider["encoded"])[0] == 200
    assert request(secured, "GET", f"{ML}/{deployed}", auth=wider["encoded"])[0] == 403
    # no role descriptors: a snapshot of the creator's privileges
    same = create_key(secured, "same", None, auth=security_admin["encoded"])
    assert request(secured, "GET", "/_security/api_key", auth=same["encoded"])[0] == 200
    assert request(secured, "GET", ML, auth=same["encoded"])[0] == 403


def test_invalid_requests(secured: LocalCluster) -> None:
    status, _, body = request(secured, "POST", "/_security/api_key", {"role_descriptors": {}}, auth=BOOT)
    assert status == 400 and "api key name is required" in body["error"]["reason"]
    status, _, body = request(secured, "POST", "/_security/api_key", {"name": "x", "role_descriptors": {"r": {"cluster": ["superpowers"]}}}, auth=BOOT)
    assert status == 400 and "unknown cluster privilege [superpowers]" in body["error"]["reason"]
    status, _, body = request(secured, "DELETE", "/_security/api_key", {}, auth=BOOT)
    assert status == 400 and body["error"]["type"] == "action_request_validation_exception"


def test_invalidated_and_expired_keys_stop_working(secured: LocalCluster) -> None:
    doomed = create_key(secured, "doomed", ["monitor_ml"])
    assert request(secured, "GET", ML, auth=doomed["encoded"])[0] == 200  # now cached as verified
    status, _, body = request(secured, "DELETE", "/_security/api_key", {"ids": [doomed["id"], "no-such-id"]}, auth=BOOT)
    assert status == 200
    assert body == {"invalidated_api_keys": [doomed["id"]], "previously_invalidated_api_keys": [], "error_count": 0}
    assert request(secured, "GET", ML, auth=doomed["encoded"])[0] == 401
    status, _, body = request(secured, "DELETE", "/_security/api_key", {"ids": [doomed["id"]]}, auth=BOOT)
    assert body["previously_invalidated_api_keys"] == [doomed["id"]]

    short = create_key(secured, "short", ["monitor_ml"], expiration="1s")
    assert short["expiration"] > int(time.time() * 1000)
    assert request(secured, "GET", ML, auth=short["encoded"])[0] == 200
    time.sleep(1.2)
    assert request(secured, "GET", ML, auth=short["encoded"])[0] == 401


def test_official_client_sees_its_own_security_exceptions(secured: LocalCluster, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.clients.install import client_env

    monitor = create_key(secured, "client-reader", ["monitor_ml"])
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, sys\n"
        "from elasticsearch import Elasticsearch, AuthenticationException, AuthorizationException\n"
        "url, key = sys.argv[1], sys.argv[2]\n"
        "out = {}\n"
        "es = Elasticsearch(url, api_key=key)\n"
        "out['models'] = es.ml.get_trained_models()['count']\n"
        "try:\n    es.ml.delete_trained_model(model_id='x')\n"
        "except AuthorizationException as e:\n    out['403'] = [e.meta.status, str(e)]\n"
        "try:\n    Elasticsearch(url, api_key=('nope', 'nope')).ml.get_trained_models()\n"
        "except AuthenticationException as e:\n    out['401'] = [e.meta.status, str(e)]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), secured.url, monitor["encoded"]], env=client_env(ensure("es9")),
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["models"] >= 0
    assert out["403"][0] == 403 and "is unauthorized for API key id" in out["403"][1]
    assert out["401"][0] == 401 and "unable to authenticate" in out["401"][1]


async def test_verification_costs_one_redis_round_trip_then_none() -> None:
    """The hot path: the first request with a key costs one HGET; the next ones, while the key
    stays in the verified cache, cost nothing (counted by the server's own command stats)."""

    def commands(client: redis.Redis) -> int:
        stats = client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))

    with redis_server_process() as (url, _):
        sync = redis.Redis.from_url(url)
        client = aioredis.Redis.from_url(url)
        try:
            store = ApiKeyStore(client, VerifiedCache(ttl_s=60))
            record, secret = new_record(name="k", username="u", role_descriptors={"r": {"cluster": ["monitor_ml"]}},
                                        limited_by=(("all",),), now_ms=int(time.time() * 1000))
            await store.put(record)
            credentials = Credentials("apikey", record.id, secret)
            before = commands(sync)
            for _ in range(200):
                assert await store.verify(credentials) == record
            assert commands(sync) - before == 1
            assert await store.verify(Credentials("apikey", record.id, "wrong")) is None
            await store.invalidate([record.id])
            assert await store.verify(credentials) is None
        finally:
            sync.close()
            await client.aclose()
