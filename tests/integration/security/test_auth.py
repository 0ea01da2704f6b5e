"""Who may use the API and Flower: plain and hashed keys, loopback by default, read-only Flower."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from api_producer.auth import KeyChecker, hash_key, parse_key_hash
from api_producer.main import create_app
from genqueue.cli import api as server
from genqueue.cli import flower
from tests.integration.security.helpers import run_flower
from worker.errors import SettingsError
from worker.settings import Settings
from worker.tenancy.tenants import TenantsSource

pytestmark = pytest.mark.timeout(60)

PLAIN = "plain-key-123"
HASHED = "hashed-key-456"
BODY = {"prompt": "hello", "params": {"max_tokens": 4}}


def _settings(**fields: Any) -> Settings:
    fields.setdefault("api_keys", ())
    fields.setdefault("api_key_hashes", ())
    fields.setdefault("api_insecure_no_auth", False)
    return Settings(redis_url="redis://127.0.0.1:6379/0", **fields)


# --------------------------------------------------------------------------- KeyChecker


def _checker(keys: tuple[str, ...] = (), key_hashes: tuple[str, ...] = ()) -> KeyChecker:
    return KeyChecker(TenantsSource(_settings(api_keys=keys, api_key_hashes=key_hashes)))


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        (f"Bearer {PLAIN}", True),
        (f"Bearer {HASHED}", True),
        (f"bearer {HASHED}", True),
        (f"Bearer {hash_key(HASHED)}", False),  # the digest is not a key
        (f"Bearer {HASHED}x", False),
        (f"Bearer {HASHED[:-1]}", False),
        (f"Basic {HASHED}", False),
        (HASHED, False),
        ("Bearer ", False),
        ("", False),
        (None, False),
    ],
)
def test_plain_and_hashed_keys(authorization: str | None, accepted: bool) -> None:
    checker = _checker((PLAIN,), (hash_key(HASHED),))
    caller = checker.caller(authorization)
    assert (caller is not None) is accepted
    if caller is not None:
        # The caller is a tenant named by a digest prefix: never the key.
        assert PLAIN not in caller and HASHED not in caller
        assert caller.startswith("key-") and len(caller) == 12


def test_each_key_is_a_tenant_of_its_own() -> None:
    checker = _checker((PLAIN,), (hash_key(HASHED).upper(),))
    plain, hashed = checker.caller(f"Bearer {PLAIN}"), checker.caller(f"Bearer {HASHED}")
    assert plain is not None and hashed is not None and plain != hashed
    assert hashed == "key-" + hash_key(HASHED)[:8]
    assert not checker.tenant(hashed).admin


def test_no_keys_means_one_anonymous_caller_who_reaches_everything() -> None:
    checker = _checker()
    assert not checker.enabled
    assert checker.caller(None) == "anonymous"
    assert checker.tenant("anonymous").admin


@pytest.mark.parametrize(
    "value", ["not-hex", hash_key(HASHED)[:-2], hash_key(HASHED) + "00", PLAIN, "g" * 64]
)
def test_a_malformed_hash_stops_the_start_without_echoing_it(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_key_hash(value)
    assert "GENQUEUE_API_KEY_HASHES" in str(info.value)
    assert value not in str(info.value)
    with pytest.raises(SettingsError):
        create_app(_settings(api_key_hashes=(value,)))


def test_hashed_key_over_http(api_factory, redis_url) -> None:
    api = api_factory(redis_url, api_keys="", api_key_hashes=hash_key(HASHED))
    good = requests.post(
        f"{api.url}/v1/tasks", json=BODY, headers={"Authorization": f"Bearer {HASHED}"}, timeout=10
    )
    assert good.status_code == 202
    for token in (hash_key(HASHED), "test-key-1", ""):
        bad = requests.post(
            f"{api.url}/v1/tasks", json=BODY, headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )  # fmt: skip
        assert bad.status_code == 401
        assert bad.headers["WWW-Authenticate"] == "Bearer"


# --------------------------------------------------------------------------- key before body

MIB = 1_048_576


def _protected_operations() -> list[tuple[str, str]]:
    """Every operation of the OpenAPI document that needs a key (all but the public ones)."""
    public = {"/healthz", "/readyz", "/metrics"}
    document = create_app(_settings(api_keys=(PLAIN,))).openapi()
    return sorted(
        (method.upper(), path.replace("{task_id}", "some-task").replace("{batch_id}", "some-batch"))
        for path, item in document["paths"].items()
        if path not in public
        for method in item
    )


PROTECTED = _protected_operations()
assert len(PROTECTED) >= 8, PROTECTED  # the task and batch routes, at least


def _answer_to_partial_body(
    url: str, method: str, path: str, authorization: str | None, declared: int, sent: int
) -> tuple[int, bytes]:
    """Send the head of a request declaring ``declared`` body bytes, then only ``sent`` of them.

    The rest never comes: an answer within the socket's timeout shows the server did not wait
    for the body (it has not read it).
    """
    parts = urlsplit(url)
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {declared}",
    ]
    if authorization is not None:
        head.append(f"Authorization: {authorization}")
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b"{" * sent)
        received = b""
        while b"\r\n\r\n" not in received:
            try:
                chunk = sock.recv(65_536)
            except TimeoutError:
                raise AssertionError(f"{method} {path}: no answer while the body is owed") from None
            if not chunk:
                break
            received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), received


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-key", f"Basic {PLAIN}"])
@pytest.mark.parametrize("declared", [MIB, 2 * MIB, 200 * MIB], ids=["1MiB", "2MiB", "200MiB"])
def test_the_key_is_checked_before_the_body_is_read(
    api_factory, redis_url, redis_client, authorization: str | None, declared: int
) -> None:
    """401 from the headers alone: no body is parsed, waited for, or measured (413) first."""
    api = api_factory(redis_url, api_keys=PLAIN)
    for method, path in PROTECTED:
        status, answer = _answer_to_partial_body(
            api.url, method, path, authorization, declared, sent=1024
        )
        assert status == 401, f"{method} {path}: {answer[:300]!r}"
        assert b"\r\nwww-authenticate: bearer\r\n" in answer.lower()
    assert list(redis_client.scan_iter()) == []


def test_with_a_key_a_declared_oversize_body_is_413_unread(api_factory, redis_url) -> None:
    api = api_factory(redis_url, api_keys=PLAIN)
    for path, declared in (
        ("/v1/tasks", 2 * MIB),
        ("/v1/tasks/batch", 2 * MIB),
        ("/v1/batches", 65 * MIB),
    ):
        status, answer = _answer_to_partial_body(
            api.url, "POST", path, f"Bearer {PLAIN}", declared, sent=1024
        )
        assert status == 413, f"{path}: {answer[:300]!r}"


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-key"])
def test_a_malformed_megabyte_without_a_key_is_401(
    api_factory, redis_url, redis_client, authorization: str | None
) -> None:
    api = api_factory(redis_url, api_keys=PLAIN)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    body = b"{" * (MIB - 1)
    with requests.Session() as session:
        for method, path in PROTECTED:
            if method != "POST":
                continue
            response = session.request(
                method, f"{api.url}{path}", data=body, headers=headers, timeout=10
            )
            assert response.status_code == 401, f"{method} {path}: {response.text[:300]}"
            assert response.headers["WWW-Authenticate"] == "Bearer"
            # The unread body does not spill into the next request on the same connection.
            after = session.get(
                f"{api.url}/v1/tasks/no-such-task",
                headers={"Authorization": f"Bearer {PLAIN}"},
                timeout=10,
            )
            assert after.status_code == 404, after.text
    assert list(redis_client.scan_iter()) == []


# --------------------------------------------------------------------------- genqueue api


class _FakeUvicorn:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def run(self, app: Any, **options: Any) -> None:
        self.calls.append(options)

    def serve_processes(self, host: str, port: int, count: int, log_level: str) -> int:
        self.calls.append({"host": host, "port": port, "processes": count})
        return 0


@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> _FakeUvicorn:
    fake = _FakeUvicorn()
    monkeypatch.setattr(server.uvicorn, "run", fake.run)
    monkeypatch.setattr(server, "serve_processes", fake.serve_processes)
    return fake


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "api.example.com"])
def test_api_refuses_a_public_host_without_keys(fake_uvicorn: _FakeUvicorn, host: str) -> None:
    with pytest.raises(SettingsError) as info:
        server.serve(_settings(), host=host, port=8000)
    assert "GENQUEUE_API_KEYS" in str(info.value)
    assert fake_uvicorn.calls == []


@pytest.mark.parametrize(
    ("host", "fields"),
    [
        ("127.0.0.1", {}),
        ("localhost", {}),
        ("::1", {}),
        ("0.0.0.0", {"api_keys": (PLAIN,)}),
        ("0.0.0.0", {"api_insecure_no_auth": True}),
    ],
)
def test_api_serves_loopback_or_with_keys(
    fake_uvicorn: _FakeUvicorn, host: str, fields: dict[str, Any]
) -> None:
    assert server.serve(_settings(**fields), host=host, port=8123) == 0
    assert [(call["host"], call["port"]) for call in fake_uvicorn.calls] == [(host, 8123)]


def test_api_serves_a_public_host_with_keys_in_the_tenants_file_only(
    fake_uvicorn: _FakeUvicorn, tmp_path: Path
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(f'[tenants.a]\nkey_hashes = ["{hash_key(HASHED)}"]\n', encoding="utf-8")
    assert server.serve(_settings(tenants_file=path), host="0.0.0.0", port=8125) == 0
    path.write_text("[tenants.a]\nadmin = 'maybe'\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"tenants.toml:2: tenants.a.admin"):
        server.serve(_settings(tenants_file=path), host="0.0.0.0", port=8125)


def test_api_serves_a_public_host_with_only_hashed_keys(fake_uvicorn: _FakeUvicorn) -> None:
    settings = _settings(api_key_hashes=(hash_key(HASHED),))
    assert server.serve(settings, host="0.0.0.0", port=8124) == 0
    assert len(fake_uvicorn.calls) == 1


# --------------------------------------------------------------------------- genqueue flower


@pytest.mark.parametrize(
    ("env_value", "expected"),
    [
        (None, "--read_only=True"),
        ("", "--read_only=True"),
        ("true", "--read_only=True"),
        ("1", "--read_only=True"),
        ("yes", "--read_only=True"),
        ("false", "--read_only=False"),
        ("False", "--read_only=False"),
        ("0", "--read_only=False"),
        ("f", "--read_only=False"),
        ("no", "--read_only=False"),
        (" off ", "--read_only=False"),
    ],
)
def test_flower_is_read_only_unless_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env_value: str | None, expected: str
) -> None:
    if env_value is None:
        monkeypatch.delenv("FLOWER_READ_ONLY", raising=False)
    else:
        monkeypatch.setenv("FLOWER_READ_ONLY", env_value)
    argv = flower.flower_argv(_settings(data_dir=tmp_path), "127.0.0.1", 5555)
    assert [arg for arg in argv if arg.startswith("--read_only")] == [expected]
    assert argv[argv.index("-A") + 1 : argv.index("-A") + 3] == ["genqueue.flower_app", "flower"]
    assert "--address=127.0.0.1" in argv and "--port=5555" in argv


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5"])
def test_flower_refuses_a_public_host_without_basic_auth(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host: str
) -> None:
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    executed: list[list[str]] = []
    monkeypatch.setattr(flower.os, "execv", lambda path, argv: executed.append(argv))
    with pytest.raises(SettingsError, match="FLOWER_BASIC_AUTH"):
        flower.run_flower(_settings(data_dir=tmp_path), host=host, port=5555)
    assert executed == []
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "admin:pw")
    flower.run_flower(_settings(data_dir=tmp_path), host=host, port=5555)
    assert len(executed) == 1 and f"--address={host}" in executed[0]


@pytest.mark.parametrize(("read_only", "revoke_status"), [(None, 403), ("false", 200)])
def test_flower_control_api_is_off_by_default(
    redis_url: str, tmp_path: Path, read_only: str | None, revoke_status: int
) -> None:
    env = {"FLOWER_BASIC_AUTH": "admin:flower-pw"}
    if read_only is not None:
        env["FLOWER_READ_ONLY"] = read_only
    with run_flower(redis_url, tmp_path, **env) as flower_process:
        base, login = flower_process.url, ("admin", "flower-pw")
        # Reading works either way; without the password, nothing does.
        assert requests.get(f"{base}/api/tasks", auth=login, timeout=10).status_code == 200
        assert requests.get(f"{base}/api/tasks", timeout=10).status_code == 401
        revoke = requests.post(f"{base}/api/task/revoke/some-task-id", auth=login, timeout=10)
        assert revoke.status_code == revoke_status
        shutdown = requests.post(f"{base}/api/worker/shutdown/w@x", auth=login, timeout=10)
        if revoke_status == 403:
            assert "Read only" in revoke.text
            assert shutdown.status_code == 403
        else:
            assert shutdown.status_code == 404  # control is on: only the worker is unknown


# ------------------------------------------------- keys required on a public host, every start


def test_a_source_that_must_have_keys_refuses_a_file_without(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text("[tenants.a]\nweight = 2\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="GENQUEUE_API_KEYS"):
        TenantsSource(_settings(tenants_file=path), require_keys=True)
    with pytest.raises(SettingsError, match="GENQUEUE_API_KEYS"):
        create_app(_settings(tenants_file=path), require_keys=True)
    assert not TenantsSource(_settings(tenants_file=path)).current().keyed  # loopback: open


@pytest.mark.parametrize(
    ("host", "fields", "required"),
    [
        ("0.0.0.0", {"api_keys": (PLAIN,)}, True),
        ("10.1.2.3", {"api_key_hashes": (hash_key(HASHED),)}, True),
        ("127.0.0.1", {}, False),
        ("0.0.0.0", {"api_insecure_no_auth": True}, False),
    ],
)
def test_each_api_process_on_a_public_host_requires_keys_itself(
    fake_uvicorn: _FakeUvicorn, monkeypatch: pytest.MonkeyPatch, host: str,
    fields: dict[str, Any], required: bool,
) -> None:  # fmt: skip
    """The check at start is made again by each process's app (a process started later, while
    the tenants file was emptied, is refused too), not once before them all."""
    built: list[bool] = []
    monkeypatch.setattr(
        server, "create_app", lambda settings, require_keys: built.append(require_keys)
    )
    monkeypatch.setattr(server, "settle_heap", lambda: None)
    assert server.serve(_settings(api_processes=1, **fields), host=host, port=8126) == 0
    assert built == [required]
    assert server.keys_required(_settings(**fields), host) is required
