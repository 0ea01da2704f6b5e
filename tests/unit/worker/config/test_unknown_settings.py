"""A ``GENQUEUE_*`` variable that is no setting is a warning naming the closest setting, at the
start of every component (worker.config.unknown_settings,
worker.config.settings_loading.load_settings)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker.config import unknown_settings
from worker.config.settings_loading import load_settings
from worker.settings import Settings, env_name

SETTINGS = [env_name(field) for field in Settings.model_fields]


@pytest.mark.parametrize(
    ("names", "warnings"),
    [
        # The issue's own misspelling, and a word left out.
        (
            ["GENQUEUE_RETRY_MAX_ATTEMPS"],
            [
                "GENQUEUE_RETRY_MAX_ATTEMPS is not a genqueue setting and is ignored: did you "
                "mean GENQUEUE_RETRY_MAX_ATTEMPTS?"
            ],
        ),
        (
            ["GENQUEUE_VISIBILITY_TIMEOUT"],
            [
                "GENQUEUE_VISIBILITY_TIMEOUT is not a genqueue setting and is ignored: did you "
                "mean GENQUEUE_VISIBILITY_TIMEOUT_S?"
            ],
        ),
        # A contract variable given genqueue's prefix: the contract's name.
        (
            ["GENQUEUE_REDIS_URL"],
            [
                "GENQUEUE_REDIS_URL is not a genqueue setting and is ignored: did you mean "
                "REDIS_URL?"
            ],
        ),
        (
            ["GENQUEUE_RUNPOD_API_KEY"],
            [
                "GENQUEUE_RUNPOD_API_KEY is not a genqueue setting and is ignored: did you mean "
                "RUNPOD_API_KEY?"
            ],
        ),
        # Case does not matter to pydantic-settings, nor here.
        (["genqueue_log_level", "Genqueue_Retry_Max_Attempts"], []),
        (
            ["genqueue_log_levle"],
            [
                "genqueue_log_levle is not a genqueue setting and is ignored: did you mean "
                "GENQUEUE_LOG_LEVEL?"
            ],
        ),
        # Nothing alike: where the settings are listed.
        (
            ["GENQUEUE_ZZZ"],
            [
                "GENQUEUE_ZZZ is not a genqueue setting and is ignored (the settings are listed "
                "in docs/configuration.md)"
            ],
        ),
        # Settings, the variables genqueue reads besides them, and other programs' variables.
        (["GENQUEUE_API_KEYS", "GENQUEUE_TENANTS_FILE", "GENQUEUE_RETRY_MAX_ATTEMPTS"], []),
        # The commands' key and API (settings too), and the test suite's variables.
        (["GENQUEUE_API_KEY", "GENQUEUE_API_URL"], []),
        (["GENQUEUE_TEST_REDIS_URL", "GENQUEUE_TEST_REAL_SERVERS"], []),
        (["REDIS_URL", "RUNPOD_POD_ID", "FLOWER_BASIC_AUTH", "PATH", "GENQUEUEX"], []),
        # One warning a name, in order.
        (
            ["GENQUEUE_WORKER_POOLS", "GENQUEUE_LOG_FORMAT", "GENQUEUE_API_PROCESS"],
            [
                "GENQUEUE_API_PROCESS is not a genqueue setting and is ignored: did you mean "
                "GENQUEUE_API_PROCESSES?",
                "GENQUEUE_WORKER_POOLS is not a genqueue setting and is ignored: did you mean "
                "GENQUEUE_WORKER_POOL?",
            ],
        ),
    ],
)
def test_unknown_settings(names: list[str], warnings: list[str]) -> None:
    assert unknown_settings.unknown_settings(names, SETTINGS) == warnings


def test_a_variable_the_endpoints_or_tenants_file_names_is_known(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        '[endpoints.big]\nurl = "http://h:5000"\napi_key_env = "GENQUEUE_BIG_KEY"\n'
        'runpod_pod_id = "p"\ncontrol_api_key_env = "GENQUEUE_CONTROL_KEY"\n'
    )
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        '[tenants.billing]\nkeys_env = "GENQUEUE_BILLING_KEYS"\n'
        'webhook_secret_env = "GENQUEUE_BILLING_HOOK"\n'
    )
    named = unknown_settings.variables_named_in(endpoints) | unknown_settings.variables_named_in(
        tenants
    )
    assert named == {
        "GENQUEUE_BIG_KEY",
        "GENQUEUE_CONTROL_KEY",
        "GENQUEUE_BILLING_KEYS",
        "GENQUEUE_BILLING_HOOK",
    }
    assert unknown_settings.unknown_settings(sorted(named), SETTINGS, also_known=named) == []
    assert unknown_settings.variables_named_in(tmp_path / "missing.toml") == set()
    (tmp_path / "bad.toml").write_text("not toml [")
    assert unknown_settings.variables_named_in(tmp_path / "bad.toml") == set()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No genqueue variable from the outer environment; the current folder, for ``.env``."""
    for name in list(os.environ):
        if name.upper().startswith(("GENQUEUE_", "RUNPOD_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_loading_settings_warns_of_the_environment_and_the_env_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GENQUEUE_RETRY_MAX_ATTEMPS", "2")
    (clean_env / ".env").write_text("GENQUEUE_LOG_LEVL=DEBUG\nGENQUEUE_LOG_FORMAT=json\n")
    (clean_env / "tenants.toml").write_text('[tenants.a]\nkeys_env = "GENQUEUE_A_KEYS"\n')
    monkeypatch.setenv("GENQUEUE_TENANTS_FILE", str(clean_env / "tenants.toml"))
    monkeypatch.setenv("GENQUEUE_A_KEYS", "k")
    with caplog.at_level(logging.WARNING, logger="worker.settings"):
        settings = load_settings()

    assert settings.retry_max_attempts == Settings().retry_max_attempts  # ignored, as it says
    assert [record.getMessage() for record in caplog.records] == [
        "GENQUEUE_LOG_LEVL is not a genqueue setting and is ignored: did you mean "
        "GENQUEUE_LOG_LEVEL?",
        "GENQUEUE_RETRY_MAX_ATTEMPS is not a genqueue setting and is ignored: did you mean "
        "GENQUEUE_RETRY_MAX_ATTEMPTS?",
    ]
    assert {record.levelno for record in caplog.records} == {logging.WARNING}


def test_the_configuration_page_shows_the_warnings_as_they_are() -> None:
    page = " ".join((ROOT / "docs" / "configuration.md").read_text().split())
    [said] = unknown_settings.unknown_settings(["GENQUEUE_RETRY_MAX_ATTEMPS"], SETTINGS)
    assert f"`{said}`" in page
    [said] = unknown_settings.unknown_settings(["GENQUEUE_REDIS_URL"], SETTINGS)
    assert said.endswith("did you mean REDIS_URL?")
    assert "(`GENQUEUE_REDIS_URL` is answered with `REDIS_URL`)" in page
