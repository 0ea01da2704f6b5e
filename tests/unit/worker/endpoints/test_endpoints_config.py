"""The endpoints file: parsing, defaults, and errors that name the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.settings_loading import load_settings
from worker.endpoints.config import load_endpoints, queue_for
from worker.errors import SettingsError
from worker.settings import Settings

GOOD = """
default = "big"

[endpoints.big]
kind = "textgen"
url = "https://abc-5000.proxy.runpod.net/"
api_key_env = "BIG_KEY"
max_concurrency = 1
fallbacks = ["small", "spare"]

[endpoints.small]
kind = "openai"
endpoint_id = "xyz789"
model = "mistral"
chat = true

[endpoints.spare]
kind = "runpod-serverless"
endpoint_id = "xyz789"
fallbacks = ["small"]
"""


def settings(tmp_path: Path, text: str | None, **fields: object) -> Settings:
    path = None
    if text is not None:
        path = tmp_path / "endpoints.toml"
        path.write_text(text)
    return Settings(endpoints_file=path, **fields)  # type: ignore[arg-type]


def test_a_full_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIG_KEY", "secret-value")
    endpoints = load_endpoints(settings(tmp_path, GOOD))
    assert endpoints is not None
    assert endpoints.names == ["big", "small", "spare"]
    assert endpoints.default == "big"
    big = endpoints.get(None)
    assert big.completions_url == "https://abc-5000.proxy.runpod.net/v1/completions"
    assert big.api_key() == "secret-value"
    small = endpoints.get("small")
    assert small.completions_url == "https://api.runpod.ai/v2/xyz789/openai/v1/chat/completions"
    assert endpoints.get("spare").base_url == "https://api.runpod.ai/v2/xyz789"
    assert endpoints.chain("big") == ["big", "small", "spare"]
    assert endpoints.chain("spare") == ["spare", "small"]
    assert queue_for("small") == "genqueue.small"


def test_runpod_endpoint_url_alone_defines_default(tmp_path: Path) -> None:
    endpoints = load_endpoints(
        settings(
            tmp_path, None, runpod_endpoint_url="http://127.0.0.1:5000/v1", runpod_max_concurrency=3
        )
    )
    assert endpoints is not None
    assert endpoints.names == ["default"]
    spec = endpoints.get(None)
    assert spec.completions_url == "http://127.0.0.1:5000/v1/completions"
    assert spec.max_concurrency == 3
    assert spec.api_key_env == "RUNPOD_API_KEY"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5000/v1/completions",
        "http://127.0.0.1:5000/v1/completions/",
        "http://127.0.0.1:5000/v1/chat/completions",
    ],
)
def test_a_full_completions_url_is_taken_for_its_base(tmp_path: Path, url: str) -> None:
    from_variable = load_endpoints(settings(tmp_path, None, runpod_endpoint_url=url))
    assert from_variable is not None
    from_file = load_endpoints(settings(tmp_path, f'[endpoints.pod]\nurl = "{url}"\n'))
    assert from_file is not None
    for spec in (from_variable.get(None), from_file.get(None)):
        assert spec.base_url == "http://127.0.0.1:5000"
        assert spec.completions_url == "http://127.0.0.1:5000/v1/completions"
        assert spec.url_for(chat=True) == "http://127.0.0.1:5000/v1/chat/completions"


def test_fairness_is_by_tasks_unless_the_file_or_the_setting_says_tokens(
    tmp_path: Path,
) -> None:
    text = '[endpoints.a]\nurl = "http://x"\n[endpoints.b]\nurl = "http://y"\nfairness = "tokens"\n'
    endpoints = load_endpoints(settings(tmp_path, text))
    assert endpoints is not None
    assert [endpoints.get(name).fairness for name in ("a", "b")] == ["tasks", "tokens"]
    from_variable = load_endpoints(
        settings(tmp_path, None, runpod_endpoint_url="http://127.0.0.1:5000", fairness="tokens")
    )
    assert from_variable is not None
    assert from_variable.get(None).fairness == "tokens"


def test_an_unknown_fairness_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENQUEUE_FAIRNESS", "bytes")
    with pytest.raises(
        SettingsError, match="GENQUEUE_FAIRNESS: Input should be 'tasks' or 'tokens'"
    ):
        load_settings()


def test_nothing_configured(tmp_path: Path) -> None:
    assert load_endpoints(settings(tmp_path, None)) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[endpoints.a]\nurl = "http://x"\nmax_concurrency = 0\n',
            ":3: endpoints.a.max_concurrency",
        ),
        ('[endpoints.a]\nurl = "http://x"\nbogus = 1\n', ":3: endpoints.a.bogus: Extra inputs"),
        (
            '[endpoints.a]\nkind = "textgen"\nendpoint_id = "e1"\n',
            ":1: endpoints.a: Value error, a textgen endpoint needs 'url'",
        ),
        ('[endpoints.a]\nurl = "ftp://x"\n', ":2: endpoints.a.url"),
        ('[endpoints.a]\nurl = "http://x"\nkind = "grpc"\n', ":3: endpoints.a.kind"),
        ('[endpoints.a]\nurl = "http://x"\nfallbacks = ["b"]\n', "names 'b', which is not defined"),
        (
            'default = "zz"\n[endpoints.a]\nurl = "http://x"\n',
            "default endpoint 'zz' is not defined",
        ),
        ("[endpoints.a\n", "Expected ']'"),
        (
            '[endpoints.a]\nurl = "http://x"\nread_timeout_s = 120\n',
            ":3: endpoints.a.read_timeout_s",
        ),
        # Pools (urls = [...]).
        ('[endpoints.a]\nkind = "vllm"\nurls = []\n', ":3: endpoints.a.urls: Value error, a pool"),
        (
            '[endpoints.a]\nurls = [\n  "http://h:1",\n  "http://h:1/v1/",\n]\n',
            ":2: endpoints.a.urls: Value error, urls[1] repeats urls[0]",
        ),
        (
            '[endpoints.a]\nurl = "http://h:1"\nurls = ["http://h:2"]\n',
            ":3: endpoints.a.urls: Value error, give 'url' (one server) or 'urls' (a pool), "
            "not both",
        ),
        (
            '[endpoints.a]\nurls = ["http://h:1", "h:2"]\n',
            ":2: endpoints.a.urls: Value error, urls[1] is not an http:// or https:// URL",
        ),
        ('[endpoints.a]\nurls = ["http://"]\n', "urls[0] is not an http:// or https:// URL"),
        (
            '[endpoints.a]\nurls = ["http://h:1"]\nmax_concurrency = "auto"\n',
            "max_concurrency = \"auto\" is not for a pool ('urls') yet",
        ),
        ('[endpoints.a]\nurls = "http://h:1"\n', ":2: endpoints.a.urls: Input should be"),
        (
            '[endpoints.a]\nkind = "runpod-serverless"\nurls = ["http://h:1"]\n',
            ":1: endpoints.a: Value error, 'urls' (a pool) is for the llamacpp, openai, textgen, "
            "vllm kinds, not runpod-serverless",
        ),
        (
            '[endpoints.a]\nurls = ["http://h:1"]\nrunpod_pod_id = "p1"\n',
            "'runpod_pod_id' names one pod; a pool ('urls') has several",
        ),
        (
            '[endpoints.a]\nurls = ["http://h:1"]\naffinity = "warm"\n',
            ":3: endpoints.a.affinity: Input should be 'off', 'prefix' or 'session'",
        ),
        (
            '[endpoints.a]\nurl = "http://h:1"\naffinity = "prefix"\n',
            ":1: endpoints.a: Value error, 'affinity' is for a pool: give 'urls'",
        ),
        (
            '[endpoints.a]\nurl = "http://x"\nfairness = "token"\n',
            ":3: endpoints.a.fairness: Input should be 'tasks' or 'tokens'",
        ),
    ],
)
def test_invalid_files_name_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_endpoints(settings(tmp_path, text))
    assert expected in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="GENQUEUE_ENDPOINTS_FILE: cannot read"):
        load_endpoints(Settings(endpoints_file=tmp_path / "nope.toml"))


def test_a_pool_lists_its_replicas(tmp_path: Path) -> None:
    text = (
        '[endpoints.p]\nkind = "llamacpp"\nmax_concurrency = 4\naffinity = "session"\n'
        'urls = ["http://10.0.0.5:8080/v1", "http://10.0.0.6:8080/"]\n'
    )
    endpoints = load_endpoints(settings(tmp_path, text))
    assert endpoints is not None
    spec = endpoints.get("p")
    assert spec.is_pool and spec.affinity == "session" and spec.max_concurrency == 4
    assert spec.replica_urls == ("http://10.0.0.5:8080", "http://10.0.0.6:8080")
    assert spec.url_for(chat=False, replica=1) == "http://10.0.0.6:8080/v1/completions"
    assert spec.base_url == "http://10.0.0.5:8080"  # the first replica's (checks, messages)


def test_a_bad_replica_url_is_not_quoted(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_endpoints(settings(tmp_path, '[endpoints.a]\nurls = ["secret-token@h"]\n'))
    assert "secret-token" not in str(info.value)
