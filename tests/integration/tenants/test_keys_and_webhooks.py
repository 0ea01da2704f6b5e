"""A tenant's webhooks are signed with its own secret; keys are added without a restart; an
invalid tenants file names its file, line and field."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.integration.observability.conftest import receiver as receiver  # the fixture
from tests.integration.observability.conftest import wait_for
from tests.integration.tenants.conftest import BODY, auth, wait_final, write_tenants
from worker.errors import SettingsError
from worker.settings import Settings
from worker.tenancy.tenants import hash_key, load_tenants
from worker.webhooks.sender import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook

KEY_RED, KEY_BLUE = "red-key", "blue-key"
SECRET_RED, SECRET_BLUE, SECRET_SERVER = "red-secret-1", "blue-secret-2", "server-secret-3"
TENANTS = f"""
[tenants.red]
key_hashes = ["{hash_key(KEY_RED)}"]
webhook_secret_env = "RED_WEBHOOK_SECRET"

[tenants.blue]
key_hashes = ["{hash_key(KEY_BLUE)}"]
webhook_secret_env = "BLUE_WEBHOOK_SECRET"
"""


@pytest.mark.timeout(90)
def test_a_tenants_webhook_verifies_with_its_secret_only(
    api_factory, redis_url, simulator, start_worker, tmp_path, monkeypatch, receiver
) -> None:
    secrets = {"RED_WEBHOOK_SECRET": SECRET_RED, "BLUE_WEBHOOK_SECRET": SECRET_BLUE}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    tenants_file = write_tenants(tmp_path / "tenants.toml", TENANTS)
    start_worker(
        redis_url, simulator.url, genqueue_tenants_file=tenants_file,
        genqueue_webhook_secret=SECRET_SERVER, genqueue_webhook_allowlist="127.0.0.1",
        **{name.lower(): value for name, value in secrets.items()},
    )  # fmt: skip
    api = api_factory(
        redis_url, api_keys="", tenants_file=tenants_file, webhook_secret=SECRET_SERVER,
        webhook_allowlist="127.0.0.1",
    )  # fmt: skip
    answer = requests.post(
        f"{api.url}/v1/tasks", json={**BODY, "webhook_url": f"{receiver.url}/in"},
        headers=auth(KEY_RED), timeout=10,
    )  # fmt: skip
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["task_id"]
    wait_final(api.url, KEY_RED, task_id)
    [hook] = wait_for(lambda: receiver.received, 30, "the webhook")
    assert json.loads(hook.body)["task_id"] == task_id
    stamp, signature = hook.headers[TIMESTAMP_HEADER], hook.headers[SIGNATURE_HEADER]
    assert verify_webhook(SECRET_RED, hook.body, stamp, signature)
    assert not verify_webhook(SECRET_BLUE, hook.body, stamp, signature)
    assert not verify_webhook(SECRET_SERVER, hook.body, stamp, signature)


def test_a_key_is_added_and_removed_without_a_restart(
    api_factory, redis_url, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("RED_WEBHOOK_SECRET", SECRET_RED)
    monkeypatch.setenv("BLUE_WEBHOOK_SECRET", SECRET_BLUE)
    tenants_file = write_tenants(tmp_path / "tenants.toml", TENANTS)
    api = api_factory(redis_url, api_keys="", tenants_file=tenants_file)
    new_key = "green-key"

    def status_of(key: str) -> int:
        return requests.post(
            f"{api.url}/v1/tasks", json=BODY, headers=auth(key), timeout=10
        ).status_code

    assert status_of(new_key) == 401
    time.sleep(1.1)  # a new modification time, and past the once-a-second look
    write_tenants(
        tenants_file, TENANTS + f'\n[tenants.green]\nkey_hashes = ["{hash_key(new_key)}"]\n'
    )
    wait_for(lambda: status_of(new_key) == 202, 10, "the new key to be accepted")
    assert status_of(KEY_RED) == 202
    # A broken version is refused with a log line: the previous one stays.
    time.sleep(1.1)
    write_tenants(tenants_file, "[tenants.green]\nweight = 'heavy'\n")
    time.sleep(1.5)
    assert status_of(new_key) == 202
    # Removed: refused again.
    write_tenants(tenants_file, TENANTS)
    wait_for(lambda: status_of(new_key) == 401, 10, "the removed key to be refused")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[tenants.a]\n\nweight = -1\n", ":3: tenants.a.weight"),
        ("[tenants.a]\nmax_priority = 12\n", ":2: tenants.a.max_priority"),
        ('[tenants.a]\nkey_hashes = ["nothex"]\n', ":2: tenants.a.key_hashes"),
        ('[tenants.a]\nkeys_env = "NOT_SET_ANYWHERE"\n', ":2: tenants.a.keys_env"),
        ("[tenants.a]\ncolour = 'red'\n", ":2: tenants.a.colour"),
        (
            f'[tenants.a]\nkey_hashes = ["{hash_key("k")}"]\n'
            f'[tenants.b]\nkey_hashes = ["{hash_key("k")}"]\n',
            ":4: tenants.b",
        ),
    ],
)
def test_an_invalid_file_names_file_line_and_field(tmp_path: Path, text: str, where: str) -> None:
    path = write_tenants(tmp_path / "tenants.toml", text)
    with pytest.raises(SettingsError) as info:
        load_tenants(Settings(tenants_file=path), environ={})
    assert f"{path}{where}" in str(info.value)


def test_plain_keys_are_tenants_of_their_own_and_weights_default_to_one(tmp_path) -> None:
    path = write_tenants(
        tmp_path / "t.toml", f'[tenants.big]\nkey_hashes = ["{hash_key("b")}"]\nweight = 3\n'
    )
    tenants = load_tenants(Settings(api_keys="a,b", tenants_file=path), environ={})
    assert tenants.by_digest[bytes.fromhex(hash_key("a"))] == "key-" + hash_key("a")[:8]
    assert tenants.by_digest[bytes.fromhex(hash_key("b"))] == "big"  # the file names it
    assert set(tenants.by_name) == {"key-" + hash_key("a")[:8], "big"}
    assert tenants.weight_of("big") == 3.0
    assert tenants.weight_of("nobody") == 1.0
