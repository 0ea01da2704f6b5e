"""Table tests for worker.settings: environment parsing, error messages that name variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.config.settings_loading import load_settings
from worker.errors import SettingsError
from worker.settings import Settings, env_name

SECRET = "sk-runpod-SECRET-9f8e7d6c5b4a"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No genqueue variable from the outer environment, and no .env file."""
    for name in list(os.environ):
        if name.startswith(("GENQUEUE_", "RUNPOD_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert info.value.error_type == "settings_error"
    return info.value.message


def test_defaults() -> None:
    settings = load_settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.runpod_endpoint_url is None
    assert settings.completions_url is None
    assert settings.runpod_api_key is None
    assert settings.runpod_max_concurrency == 1
    assert settings.api_keys == ()
    assert settings.endpoint_read_timeout_s == 95.0
    assert settings.worker_concurrency == 500


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GENQUEUE_WORKER_CONCURRENCY", "lots"),
        ("GENQUEUE_WORKER_CONCURRENCY", "0"),
        ("GENQUEUE_WORKER_CONCURRENCY", "10001"),
        ("REDIS_URL", "http://x"),
        ("REDIS_URL", "localhost:6379"),
        ("RUNPOD_MAX_CONCURRENCY", "0"),
        ("RUNPOD_MAX_CONCURRENCY", "-1"),
        ("RUNPOD_MAX_CONCURRENCY", "many"),
        ("RUNPOD_ENDPOINT_URL", "ftp://x"),
        ("RUNPOD_ENDPOINT_URL", "x-5000.proxy.runpod.net"),
        ("GENQUEUE_ENDPOINT_READ_TIMEOUT_S", "100"),
        ("GENQUEUE_ENDPOINT_READ_TIMEOUT_S", "100.0"),
        ("GENQUEUE_ENDPOINT_READ_TIMEOUT_S", "150"),
        ("GENQUEUE_ENDPOINT_READ_TIMEOUT_S", "0"),
        ("GENQUEUE_ENDPOINT_CONNECT_TIMEOUT_S", "0"),
        ("GENQUEUE_RETRY_MAX_ATTEMPTS", "0"),
        ("GENQUEUE_WORKER_POOL", "eventlet"),
        ("GENQUEUE_LOG_LEVEL", "TRACE"),
        ("GENQUEUE_RESULT_TTL_S", "10"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = settings_error(monkeypatch, **{name: value})
    assert message.startswith("invalid configuration:")
    assert f"  {name}: " in message


def test_every_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(
        monkeypatch,
        GENQUEUE_WORKER_CONCURRENCY="lots",
        REDIS_URL="http://x",
        RUNPOD_MAX_CONCURRENCY="0",
    )
    for name in ("GENQUEUE_WORKER_CONCURRENCY", "REDIS_URL", "RUNPOD_MAX_CONCURRENCY"):
        assert name in message


def test_invalid_value_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, REDIS_URL="http://user:hunter2@x")
    assert "hunter2" not in message


def test_records_must_outlive_the_lost_message_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(
        monkeypatch, GENQUEUE_RESULT_TTL_S="60", GENQUEUE_VISIBILITY_TIMEOUT_S="30"
    )
    assert "GENQUEUE_RESULT_TTL_S must be at least 4 x GENQUEUE_VISIBILITY_TIMEOUT_S" in message


def test_retry_base_must_not_exceed_max(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(
        monkeypatch, GENQUEUE_RETRY_BASE_DELAY_S="50", GENQUEUE_RETRY_MAX_DELAY_S="10"
    )
    assert "GENQUEUE_RETRY_BASE_DELAY_S must not exceed GENQUEUE_RETRY_MAX_DELAY_S" in message


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("99.9", True), ("95", True), ("0.1", True), ("100", False), ("100.01", False)],
)
def test_read_timeout_below_pod_proxy_limit(
    monkeypatch: pytest.MonkeyPatch, value: str, accepted: bool
) -> None:
    monkeypatch.setenv("GENQUEUE_ENDPOINT_READ_TIMEOUT_S", value)
    if accepted:
        assert load_settings().endpoint_read_timeout_s == float(value)
    else:
        with pytest.raises(SettingsError, match="GENQUEUE_ENDPOINT_READ_TIMEOUT_S"):
            load_settings()


def test_read_timeout_override_refused() -> None:
    with pytest.raises(SettingsError, match="GENQUEUE_ENDPOINT_READ_TIMEOUT_S"):
        load_settings(endpoint_read_timeout_s=100)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a, b,,c", ["a", "b", "c"]),
        ("one", ["one"]),
        ("  key-1 ,key-2  ", ["key-1", "key-2"]),
        ("", []),
        (" , ,", []),
    ],
)
def test_api_keys_split(monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]) -> None:
    monkeypatch.setenv("GENQUEUE_API_KEYS", value)
    keys = load_settings().api_keys
    assert len(keys) == len(expected)
    assert [k.get_secret_value() for k in keys] == expected


BASE = "https://x-5000.proxy.runpod.net"


@pytest.mark.parametrize(
    "url",
    [
        BASE, f"{BASE}/", f"{BASE}/v1", f"{BASE}/v1/", f"  {BASE}/v1  ",
        # The full URL users copy (the seed's post names it): no doubled path.
        f"{BASE}/v1/completions", f"{BASE}/v1/completions/", f"{BASE}/v1/chat/completions",
    ],
)  # fmt: skip
def test_completions_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RUNPOD_ENDPOINT_URL", url)
    assert load_settings().completions_url == f"{BASE}/v1/completions"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/completions"),
        ("https://api.example.com/openai", "https://api.example.com/openai/v1/completions"),
        ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1/completions"),
    ],
)
def test_completions_url_other_bases(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("RUNPOD_ENDPOINT_URL", url)
    assert load_settings().completions_url == expected


@pytest.mark.parametrize("url", ["", "   "])
def test_blank_endpoint_is_none(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RUNPOD_ENDPOINT_URL", url)
    settings = load_settings()
    assert settings.runpod_endpoint_url is None
    assert settings.completions_url is None


def test_secret_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", SECRET)
    monkeypatch.setenv("GENQUEUE_API_KEYS", "client-key-AAAA1111,client-key-BBBB2222")
    settings = load_settings()
    assert settings.runpod_api_key is not None
    assert settings.runpod_api_key.get_secret_value() == SECRET
    for text in (repr(settings), str(settings), repr(settings.model_dump())):
        assert SECRET not in text
        assert "client-key-AAAA1111" not in text
        assert "client-key-BBBB2222" not in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GENQUEUE_WORKER_CONCURRENCY", "lots"),
        ("REDIS_URL", "http://x"),
        ("RUNPOD_MAX_CONCURRENCY", "0"),
        ("GENQUEUE_ENDPOINT_READ_TIMEOUT_S", "100"),
    ],
)
def test_secret_not_in_error_message(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", SECRET)
    monkeypatch.setenv("GENQUEUE_API_KEYS", "client-key-AAAA1111")
    message = settings_error(monkeypatch, **{name: value})
    assert name in message
    assert SECRET not in message
    assert "client-key-AAAA1111" not in message


def test_dotenv_in_working_directory_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("GENQUEUE_WORKER_CONCURRENCY=42\nRUNPOD_MAX_CONCURRENCY=3\n")
    settings = load_settings()
    assert settings.worker_concurrency == 42
    assert settings.runpod_max_concurrency == 3


def test_environment_beats_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GENQUEUE_WORKER_CONCURRENCY=42\n")
    monkeypatch.setenv("GENQUEUE_WORKER_CONCURRENCY", "7")
    assert load_settings().worker_concurrency == 7


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("redis_url", "REDIS_URL"),
        ("runpod_endpoint_url", "RUNPOD_ENDPOINT_URL"),
        ("runpod_api_key", "RUNPOD_API_KEY"),
        ("runpod_max_concurrency", "RUNPOD_MAX_CONCURRENCY"),
        ("api_keys", "GENQUEUE_API_KEYS"),
        ("worker_concurrency", "GENQUEUE_WORKER_CONCURRENCY"),
        ("endpoint_read_timeout_s", "GENQUEUE_ENDPOINT_READ_TIMEOUT_S"),
    ],
)
def test_env_name(field: str, name: str) -> None:
    assert env_name(field) == name


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.worker_concurrency = 1  # type: ignore[misc]


def test_a_sentinel_url_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "sentinel://:pw@10.0.0.1:26379/3;sentinel://10.0.0.2")
    monkeypatch.setenv("GENQUEUE_REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    settings = load_settings()
    assert settings.redis_sentinel_master == "mymaster"
    assert settings.redis_sentinel_password is not None
    assert "sentinel-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sentinel://:hunter2@h1:26379;redis://h2:6379/0", "address 2 must start with sentinel://"),
        ("sentinel://:hunter2@h1:port/0", "address 1 has an invalid port"),
        ("sentinel://:hunter2@:26379/0", "address 1 has no host"),
        ("sentinel://:hunter2@h1:26379/zero", "must be a number"),
        ("sentinel://:hunter2@h1:26379;sentinel://h2/2", "on the first address"),
    ],
)
def test_an_invalid_sentinel_url_says_why_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    message = settings_error(monkeypatch, REDIS_URL=url)
    assert "  REDIS_URL: " in message
    assert reason in message
    assert "hunter2" not in message


def test_the_results_stay_in_redis_url_unless_a_result_redis_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@broker:6379/0")
    settings = load_settings()
    assert (settings.results_apart, settings.results_url) == (False, settings.redis_url)
    monkeypatch.setenv("GENQUEUE_RESULT_REDIS_URL", "rediss://:hunter3@results:6380/2")
    settings = load_settings()
    assert settings.results_apart is True
    assert settings.results_url == "rediss://:hunter3@results:6380/2"
    assert "hunter3" not in repr(settings)
    # The same URL twice is one Redis.
    monkeypatch.setenv("GENQUEUE_RESULT_REDIS_URL", "redis://:hunter2@broker:6379/0")
    assert load_settings().results_apart is False


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sentinel://:hunter2@h1:26379/0", "a result Redis behind Sentinel is not supported"),
        ("http://:hunter2@h1:6379/0", "must start with redis:// or rediss://"),
    ],
)
def test_an_invalid_result_redis_url_says_why_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    message = settings_error(monkeypatch, GENQUEUE_RESULT_REDIS_URL=url)
    assert "  GENQUEUE_RESULT_REDIS_URL: " in message
    assert reason in message
    assert "hunter2" not in message


@pytest.mark.parametrize("name", ["REDIS_URL", "GENQUEUE_RESULT_REDIS_URL"])
def test_a_unix_socket_is_refused_saying_why(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    message = settings_error(monkeypatch, **{name: "unix:///run/redis/redis.sock"})
    assert f"  {name}: " in message
    assert "a unix socket is not supported" in message
