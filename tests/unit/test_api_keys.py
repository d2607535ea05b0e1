"""``gateway.api_keys`` pure logic: credentials, hashing, records, privileges, the verified cache."""

from __future__ import annotations

import base64

import pytest

from gateway import api_keys
from gateway.api_keys import (
    ApiKeyRecord,
    BadCredentials,
    Credentials,
    VerifiedCache,
    action_allowed,
    encode_credentials,
    granting_privileges,
    hash_secret,
    new_record,
    parse_authorization,
    role_privileges,
    secret_matches,
    unknown_privileges,
)

INFER = "cluster:monitor/xpack/ml/inference/infer"
GET = "cluster:monitor/xpack/ml/inference/get"
PUT = "cluster:admin/xpack/ml/inference/put"
START = "cluster:admin/xpack/ml/trained_models/deployment/start"
LEGACY_INFER = "cluster:monitor/xpack/ml/trained_models/deployment/infer"
CREATE_KEY = "cluster:admin/xpack/security/api_key/create"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ---- the Authorization header --------------------------------------------------------------


def test_parse_api_key_and_basic() -> None:
    assert parse_authorization(f"ApiKey {b64('my-id:my-secret')}") == Credentials("apikey", "my-id", "my-secret")
    assert parse_authorization(f"apikey   {b64('id:a:b')}") == Credentials("apikey", "id", "a:b")
    assert parse_authorization(f"Basic {b64('elastic:changeme')}") == Credentials("basic", "elastic", "changeme")
    assert parse_authorization("Bearer token") is None
    assert parse_authorization("") is None


@pytest.mark.parametrize("header", ["ApiKey !!!", f"ApiKey {b64('no-colon')}", f"ApiKey {b64(':secret')}", f"Basic {b64('user:')}"])
def test_malformed_credentials(header: str) -> None:
    with pytest.raises(BadCredentials):
        parse_authorization(header)


def test_encoded_form_is_what_clients_send() -> None:
    # elasticsearch-py sends api_key=("id", "key") as ApiKey base64("id:key")
    assert encode_credentials("my-id", "my-secret") == "bXktaWQ6bXktc2VjcmV0"


# ---- hashing and records -------------------------------------------------------------------


def test_salted_hash_verifies_only_the_right_secret() -> None:
    salt = b"0123456789abcdef"
    digest = hash_secret("s3cret", salt)
    assert secret_matches("s3cret", salt, digest)
    assert not secret_matches("s3cret!", salt, digest)
    assert hash_secret("s3cret", b"another salt....") != digest


def test_record_round_trip_never_holds_the_secret() -> None:
    record, secret = new_record(
        name="ingest", username="elastic", role_descriptors={"r": {"cluster": ["monitor_ml"]}},
        limited_by=(("all",),), now_ms=1000, expiration_ms=5000,
    )
    packed = record.pack()
    assert secret.encode() not in packed
    assert ApiKeyRecord.unpack(packed) == record
    assert secret_matches(secret, record.salt, record.secret_hash)
    info = record.info()
    assert "salt" not in info and "hash" not in str(info) and info["expiration"] == 5000
    assert len(record.id) >= 20 and len(secret) >= 22
    two, _ = new_record(name="x", username="u", role_descriptors={}, limited_by=(), now_ms=0)
    assert two.salt != record.salt and two.id != record.id


def test_record_lifetime() -> None:
    record, _ = new_record(name="x", username="u", role_descriptors={}, limited_by=(("all",),), now_ms=0, expiration_ms=100)
    assert record.usable(99) and not record.usable(100)
    forever, _ = new_record(name="x", username="u", role_descriptors={}, limited_by=(("all",),), now_ms=0)
    assert forever.usable(10**15)


def test_unpack_refuses_other_data() -> None:
    with pytest.raises(ValueError):
        ApiKeyRecord.unpack(b"\x81\xa1v\x09")  # {"v": 9}


# ---- privileges ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("privilege", "allowed", "refused"),
    [
        ("monitor_ml", [INFER, GET, "cluster:monitor/xpack/ml/inference/stats/get", LEGACY_INFER], [PUT, START, CREATE_KEY]),
        ("manage_ml", [INFER, GET, PUT, START, LEGACY_INFER], [CREATE_KEY]),
        ("manage_inference", [START, LEGACY_INFER], [PUT, INFER]),
        ("monitor_inference", [LEGACY_INFER], [INFER, START]),
        ("manage_security", [CREATE_KEY], [INFER, PUT]),
        ("manage_api_key", [CREATE_KEY], [INFER]),
        ("manage", [INFER, PUT, START], [CREATE_KEY]),
        ("monitor", [INFER, GET], [PUT]),
        ("all", [INFER, PUT, START, CREATE_KEY, "cluster:admin/inferq/anything"], []),
    ],
)
def test_privilege_matrix(privilege: str, allowed: list[str], refused: list[str]) -> None:
    for action in allowed:
        assert action_allowed([[privilege]], action), action
    for action in refused:
        assert not action_allowed([[privilege]], action), action


def test_limited_by_intersects_and_nothing_allows_nothing() -> None:
    # an `all` key created by a manage_security key can only do security things
    assert action_allowed([["all"], ["manage_security"]], CREATE_KEY)
    assert not action_allowed([["all"], ["manage_security"]], INFER)
    assert action_allowed([["monitor_ml"], ["all"]], INFER)
    assert not action_allowed([["monitor_ml"], ["all"]], PUT)
    assert not action_allowed([], INFER)
    assert not action_allowed([[]], INFER)
    assert not action_allowed([["no_such_privilege"]], INFER)


def test_new_key_grants() -> None:
    creator = (("manage_ml",),)
    scoped, _ = new_record(
        name="k", username="u", role_descriptors={"a": {"cluster": ["monitor_ml"]}, "b": {"cluster": ["all"]}},
        limited_by=creator, now_ms=0,
    )
    assert scoped.grants == (("monitor_ml", "all"), ("manage_ml",))
    assert action_allowed(scoped.grants, PUT) and not action_allowed(scoped.grants, CREATE_KEY)
    snapshot, _ = new_record(name="k", username="u", role_descriptors={}, limited_by=creator, now_ms=0)
    assert snapshot.grants == creator


def test_granting_privileges_narrowest_first() -> None:
    assert granting_privileges(INFER) == ["monitor_ml", "manage_ml", "monitor", "manage", "all"]
    assert granting_privileges(CREATE_KEY) == ["manage_api_key", "manage_security", "all"]


def test_role_privileges_and_unknown_names() -> None:
    assert role_privileges({"a": {"cluster": ["monitor_ml", "manage_ml"]}, "b": {"cluster": ["monitor_ml"]}, "c": {}}) == [
        "monitor_ml", "manage_ml",
    ]
    assert unknown_privileges(["monitor_ml", "read", "all"]) == ["read"]
    assert set(api_keys.NARROWEST_FIRST) == set(api_keys.PRIVILEGES)


# ---- the verified cache --------------------------------------------------------------------


def test_verified_cache_expires_and_forgets() -> None:
    record, secret = new_record(name="k", username="u", role_descriptors={}, limited_by=(("all",),), now_ms=0)
    credentials = Credentials("apikey", record.id, secret)
    cache = VerifiedCache(ttl_s=5.0)
    assert cache.get(credentials, now_s=0.0) is None
    cache.put(credentials, record, now_s=0.0)
    assert cache.get(credentials, now_s=4.9) is record
    assert cache.get(Credentials("apikey", record.id, secret + "x"), now_s=1.0) is None
    assert cache.get(credentials, now_s=5.0) is None
    cache.put(credentials, record, now_s=10.0)
    cache.forget([record.id])
    assert cache.get(credentials, now_s=10.1) is None


def test_verified_cache_is_bounded() -> None:
    cache = VerifiedCache(ttl_s=60.0, max_entries=3)
    record, _ = new_record(name="k", username="u", role_descriptors={}, limited_by=(("all",),), now_ms=0)
    for i in range(10):
        cache.put(Credentials("apikey", record.id, f"s{i}"), record, now_s=0.0)
    assert len(cache._entries) <= 3
