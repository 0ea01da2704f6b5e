"""Pieces of tenants: the token estimate, the day's reset, a message's tenant, the tenants
file read and read again (files in ``tmp_path``, no Redis)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from api_producer.quota import estimate, seconds_to_midnight, utc_day
from worker.contract import GenerationRequest
from worker.endpoints.config import load_endpoints
from worker.errors import SettingsError
from worker.settings import Settings
from worker.tenancy.tenants import (
    INTERNAL,
    Tenants,
    TenantsSource,
    hash_key,
    key_tenant,
    load_tenants,
    tenant_of_message,
)


@pytest.mark.parametrize(
    ("fields", "tokens"),
    [
        ({"prompt": "abcd", "params": {"max_tokens": 40}}, 41),
        ({"prompt": "abcde", "params": {"max_tokens": 1}}, 3),  # 5 characters: 2 tokens
        ({"prompt": "ab", "system": "cd"}, 1 + 512),  # no max_tokens: the default
        ({"messages": [{"role": "user", "content": "x" * 8}], "params": {"max_tokens": 2}}, 4),
    ],
)
def test_estimate(fields: dict, tokens: int) -> None:
    assert estimate(GenerationRequest.model_validate(fields), default_max_tokens=512) == tokens


@pytest.mark.parametrize(
    ("now_s", "left_s", "day"),
    [
        (1_798_761_600.0, 86_400, "2027-01-01"),  # midnight exactly: a whole day
        (1_798_761_600.0 + 86_399.5, 1, "2027-01-01"),
        (1_798_761_600.0 - 0.25, 1, "2026-12-31"),
        (1_798_761_600.0 + 3_600, 82_800, "2027-01-01"),
    ],
)
def test_the_budget_resets_at_utc_midnight(now_s: float, left_s: int, day: str) -> None:
    assert seconds_to_midnight(now_s) == left_s
    assert utc_day(now_s) == day


@pytest.mark.parametrize(
    ("args", "kwargs", "tenant"),
    [
        ((), {"request": {"prompt": "x", "tenant": "billing"}}, "billing"),
        (({"prompt": "x", "tenant": "billing"},), {}, "billing"),
        ((), {"request": {"prompt": "x"}}, INTERNAL),
        ((), {"request": {"tenant": "not a name!"}}, INTERNAL),
        ((), {"request": "not an object"}, INTERNAL),
    ],
)
def test_a_messages_tenant(args: tuple, kwargs: dict, tenant: str) -> None:
    assert tenant_of_message(args, kwargs) == tenant


def test_unknown_tenants_weigh_one_and_key_tenants_are_digest_prefixes() -> None:
    assert Tenants().weight_of("anyone") == 1.0
    assert key_tenant("test-key-1").startswith("key-") and len(key_tenant("x")) == 12


# --- The tenants file, read again: a reload never lowers protection ---------------------------

KEY = "unit-key"
KEYED = f'[tenants.red]\nkey_hashes = ["{hash_key(KEY)}"]\n'


def _source(path: Path, checks_keys: bool = True) -> TenantsSource:
    return TenantsSource(Settings(tenants_file=path), check_every_s=0, checks_keys=checks_keys)


def _rewrite(path: Path, content: str | bytes) -> None:
    """A new version with a new modification time, as an editor or ``cat >`` leaves it."""
    stamp = path.stat().st_mtime_ns
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    os.utime(path, ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))


@pytest.mark.parametrize(
    "unkeyed",
    ["", "# rotating\n", "[tenants.red]\nweight = 2\n", "[tenants.red]\nkey_hashes = []\n"],
    ids=["empty", "comment", "last-key-removed", "empty-list"],
)
def test_a_version_without_keys_never_replaces_one_with_keys(
    tmp_path: Path, unkeyed: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(KEYED, encoding="utf-8")
    source = _source(path)
    assert source.current().keyed
    _rewrite(path, unkeyed)
    with caplog.at_level(logging.ERROR, logger="genqueue.tenants"):
        tenants = source.current()
    assert tenants.keyed and "red" in tenants.by_name  # the last good version stays
    assert "no keys" in caplog.text and "not re-read" in caplog.text
    # A version with keys again is taken.
    _rewrite(path, KEYED.replace("red", "blue"))
    assert set(source.current().by_name) == {"blue"}


def test_a_workers_source_refuses_an_emptied_file_and_takes_a_keyless_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker checks no keys (the API may hold them in GENQUEUE_API_KEYS), but an emptied
    file would drop every tenant's limits and endpoints: refused."""
    path = tmp_path / "tenants.toml"
    path.write_text(KEYED + "max_priority = 3\n", encoding="utf-8")
    source = _source(path, checks_keys=False)
    _rewrite(path, "")
    with caplog.at_level(logging.ERROR, logger="genqueue.tenants"):
        assert source.current().max_priority_of("red") == 3
    assert "names no tenant" in caplog.text
    _rewrite(path, "[tenants.red]\nmax_priority = 4\n")
    assert source.current().max_priority_of("red") == 4


def test_a_source_that_never_had_keys_may_gain_them(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text("", encoding="utf-8")
    source = _source(path)
    assert not source.current().keyed
    _rewrite(path, KEYED)
    assert source.current().keyed


# --- Every way a config file can be wrong: file, line and field, and never its contents -------

SECRETISH = "s3cr3t-contents"


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (f"# {SECRETISH}\n\n[tenants.a]\nweight = \xff\n".encode("latin-1"), ":4: not UTF-8"),
        (f"# {SECRETISH}\ntenants = 5\n", ":2: tenants: "),
        (f"# {SECRETISH}\n[tenants]\na = 5\n", ":3: tenants.a: "),
        (f"# {SECRETISH}\n[tenants.a]\nweight = heavy\n", ":3: not valid TOML"),
        (f'# {SECRETISH}\n[tenants.a]\nweight = "{SECRETISH}"\n', ":3: tenants.a.weight: "),
    ],
    ids=["not-utf8", "tenants-a-number", "tenant-a-number", "bad-toml", "bad-value"],
)
def test_a_broken_tenants_file_is_named_by_file_line_and_field(
    tmp_path: Path, content: str | bytes, where: str
) -> None:
    path = tmp_path / "tenants.toml"
    _write(path, content)
    with pytest.raises(SettingsError) as info:
        load_tenants(Settings(tenants_file=path), environ={})
    assert f"{path}{where}" in str(info.value)
    assert SECRETISH not in str(info.value)


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (f"# {SECRETISH}\n[endpoints.a]\nurl = \xff\n".encode("latin-1"), ":3: not UTF-8"),
        (f"# {SECRETISH}\nendpoints = 5\n", ":2: endpoints: "),
        (f"# {SECRETISH}\n[endpoints]\na = 5\n", ":3: endpoints.a: "),
        (f'[endpoints.a]\nurl = "http://x"\nmodel = 5\n# {SECRETISH}\n', ":3: endpoints.a.model"),
    ],
    ids=["not-utf8", "endpoints-a-number", "endpoint-a-number", "bad-value"],
)
def test_a_broken_endpoints_file_is_named_by_file_line_and_field(
    tmp_path: Path, content: str | bytes, where: str
) -> None:
    path = tmp_path / "endpoints.toml"
    _write(path, content)
    with pytest.raises(SettingsError) as info:
        load_endpoints(Settings(endpoints_file=path))
    assert f"{path}{where}" in str(info.value)
    assert SECRETISH not in str(info.value)


@pytest.mark.parametrize(
    "broken",
    [b"[tenants.red]\nweight = \xff\n", b"tenants = 5\n", b"[tenants]\nred = 5\n"],
    ids=["not-utf8", "tenants-a-number", "tenant-a-number"],
)
def test_a_broken_version_is_not_re_read_and_raises_nothing(
    tmp_path: Path, broken: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(KEYED, encoding="utf-8")
    source = _source(path)
    _rewrite(path, broken)
    with caplog.at_level(logging.ERROR, logger="genqueue.tenants"):
        assert "red" in source.current().by_name
    assert "not re-read" in caplog.text and hash_key(KEY) not in caplog.text


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


# --- Tenant names never collide, and the reserved ones are refused -----------------------------

#: Two keys whose SHA-256 digests share their first 32 bits (found by a birthday search).
COLLIDING = ("collide-14550", "collide-37896")


def test_two_keys_whose_tenant_names_collide_are_refused() -> None:
    assert key_tenant(COLLIDING[0]) == key_tenant(COLLIDING[1]) == "key-ab4ef502"
    with pytest.raises(SettingsError) as info:
        load_tenants(Settings(api_keys=",".join(COLLIDING)), environ={})
    assert "key-ab4ef502" in str(info.value) and "GENQUEUE_API_KEYS" in str(info.value)
    assert COLLIDING[0] not in str(info.value) and COLLIDING[1] not in str(info.value)


def test_two_digests_whose_tenant_names_collide_are_refused() -> None:
    digests = "ab4ef502" + "0" * 56, "ab4ef502" + "1" * 56
    with pytest.raises(SettingsError) as info:
        load_tenants(Settings(api_key_hashes=",".join(digests)), environ={})
    assert "key-ab4ef502" in str(info.value)


def test_a_key_named_twice_is_one_tenant() -> None:
    tenants = load_tenants(Settings(api_keys="same,same", api_key_hashes=hash_key("same")), {})
    assert set(tenants.by_name) == {key_tenant("same")}


def test_colliding_keys_are_fine_when_the_tenants_file_names_one(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(f'[tenants.a]\nkey_hashes = ["{hash_key(COLLIDING[1])}"]\n', encoding="utf-8")
    tenants = load_tenants(Settings(api_keys=",".join(COLLIDING), tenants_file=path), {})
    assert set(tenants.by_name) == {"key-ab4ef502", "a"}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[tenants.internal]\n", ":1: tenants.internal: "),
        ("\n[tenants.Internal]\n", ":2: tenants.Internal: "),
        ("[tenants.anonymous]\n", ":1: tenants.anonymous: "),
        ("[tenants.other]\n", ":1: tenants.other: "),
        ("[tenants.key-ab4ef502]\n", ":1: tenants.key-ab4ef502: "),
        ("[tenants.KEY-x]\n", ":1: tenants.KEY-x: "),
        ('[tenants.a]\nname = "internal"\n', ":2: tenants.a.name: "),
    ],
)
def test_reserved_tenant_names_are_refused(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_tenants(Settings(tenants_file=path), environ={})
    assert f"{path}{where}" in str(info.value)
