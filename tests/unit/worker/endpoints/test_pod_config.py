"""The endpoints file's pod fields: what it accepts, and a clear error for what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.settings_loading import load_settings
from worker.endpoints.config import load_endpoints
from worker.errors import SettingsError
from worker.settings import Settings


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    return Settings(endpoints_file=path)


def test_the_pod_fields_and_their_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        '[endpoints.big]\nurl = "http://x"\nrunpod_pod_id = "abc123"\n'
        'idle_stop_after_s = 600\ncontrol_api_key_env = "POD_ACCOUNT_KEY"\nusd_per_hour = 0.69\n'
        '[endpoints.plain]\nurl = "http://y"\n'
    )
    endpoints = load_endpoints(_load(tmp_path, text))
    assert endpoints is not None
    big, plain = endpoints.get("big"), endpoints.get("plain")
    assert (big.runpod_pod_id, big.idle_stop_after_s, big.usd_per_hour) == ("abc123", 600, 0.69)
    assert (big.pod_ready_timeout_s, big.stop_pods_started_by_others) == (900.0, False)
    monkeypatch.setenv("POD_ACCOUNT_KEY", "rpa_1")
    assert big.control_api_key() == "rpa_1"
    assert plain.control_api_key_env == "RUNPOD_API_KEY"
    assert (plain.runpod_pod_id, plain.idle_stop_after_s, plain.usd_per_hour) == (None, None, None)
    assert Settings().runpod_rest_api_url == "https://rest.runpod.io/v1"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ('idle_stop_after_s = 60\n', "'idle_stop_after_s' needs 'runpod_pod_id'"),
        ('runpod_pod_id = "a/b"\n', ":3: endpoints.a.runpod_pod_id"),
        ('runpod_pod_id = "p"\nidle_stop_after_s = 0\n', ":4: endpoints.a.idle_stop_after_s"),
        ('runpod_pod_id = "p"\ncontrol_api_key_env = "rpa_literal_key"\n',
         ":4: endpoints.a.control_api_key_env"),
        ('usd_per_hour = -1\n', ":3: endpoints.a.usd_per_hour"),
        ('runpod_pod_id = "p"\npod_ready_timeout_s = 0\n', ":4: endpoints.a.pod_ready_timeout_s"),
    ],
)  # fmt: skip
def test_bad_pod_fields_are_refused_naming_line_and_field(
    tmp_path: Path, fields: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as info:
        load_endpoints(_load(tmp_path, f'[endpoints.a]\nurl = "http://x"\n{fields}'))
    assert expected in str(info.value)
    assert "rpa_literal_key" not in str(info.value)  # a key put in the wrong place is not echoed


def test_a_serverless_endpoint_has_no_pod(tmp_path: Path) -> None:
    text = '[endpoints.a]\nkind = "runpod-serverless"\nendpoint_id = "e1"\nrunpod_pod_id = "p"\n'
    with pytest.raises(SettingsError, match="a runpod-serverless endpoint has none"):
        load_endpoints(_load(tmp_path, text))


def test_a_rest_api_url_that_is_no_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_REST_API_URL", "rest.runpod.io")
    with pytest.raises(SettingsError, match="RUNPOD_REST_API_URL"):
        load_settings()
