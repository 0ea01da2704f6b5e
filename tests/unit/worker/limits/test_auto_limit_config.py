"""``max_concurrency = "auto"`` in the endpoints file and ``RUNPOD_MAX_CONCURRENCY=auto``: the
bounds and their defaults, and errors naming file, line and field (or the variable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.settings_loading import load_settings
from worker.endpoints.config import load_endpoints
from worker.errors import SettingsError
from worker.limits.auto_limit import AutoBounds, limit_spec
from worker.settings import Settings

HEAD = '[endpoints.a]\nurl = "http://x"\n'


def load(tmp_path: Path, text: str) -> dict[str, int | AutoBounds]:
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    endpoints = load_endpoints(Settings(endpoints_file=path))
    assert endpoints is not None
    return {name: endpoints.get(name).cap for name in endpoints.names}


def test_auto_with_and_without_bounds(tmp_path: Path) -> None:
    caps = load(
        tmp_path,
        HEAD + 'max_concurrency = "auto"\n'
        '[endpoints.b]\nurl = "http://y"\nmax_concurrency = "auto"\n'
        "auto_min_concurrency = 2\nauto_max_concurrency = 12\n"
        '[endpoints.c]\nurl = "http://z"\nmax_concurrency = 3\n'
        '[endpoints.d]\nurl = "http://w"\nmax_concurrency = "auto"\nauto_min_concurrency = 80\n',
    )
    assert caps == {"a": AutoBounds(1, 64), "b": AutoBounds(2, 12), "c": 3, "d": AutoBounds(80, 80)}
    assert limit_spec("b", caps["b"]) == "auto:2:12:genqueue:auto-limit:b"
    assert limit_spec("c", caps["c"]) == "3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            HEAD + 'max_concurrency = "auto"\nauto_min_concurrency = 8\nauto_max_concurrency = 4\n',
            ":5: endpoints.a.auto_max_concurrency: Value error, auto_max_concurrency (4) is below "
            "auto_min_concurrency (8)",
        ),
        (
            HEAD + 'max_concurrency = "auto"\nauto_min_concurrency = 0\n',
            ":4: endpoints.a.auto_min_concurrency: Value error, must be a whole number from 1",
        ),
        (
            HEAD + 'max_concurrency = "auto"\nauto_max_concurrency = 2.5\n',
            ":4: endpoints.a.auto_max_concurrency: Value error, must be a whole number from 1",
        ),
        (
            HEAD + "max_concurrency = 4\nauto_max_concurrency = 8\n",
            ":4: endpoints.a.auto_max_concurrency: Value error, a bound of the limit is given only "
            'with max_concurrency = "auto"',
        ),
        (
            HEAD + "auto_min_concurrency = 2\n",
            ":3: endpoints.a.auto_min_concurrency: Value error, a bound of the limit is given only",
        ),
        (
            HEAD + 'max_concurrency = "automatic"\n',
            ":3: endpoints.a.max_concurrency: Value error, must be a whole number from 1 to "
            '100000, or "auto"',
        ),
        (
            '[endpoints.a]\nkind = "runpod-serverless"\nendpoint_id = "e1"\n'
            'max_concurrency = "auto"\n',
            ':4: endpoints.a.max_concurrency: Value error, "auto" cannot apply to a '
            "runpod-serverless endpoint",
        ),
    ],
)
def test_bad_auto_input_names_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, text)
    assert f"{tmp_path / 'endpoints.toml'}{expected}" in str(info.value)


def test_runpod_max_concurrency_auto_and_its_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_ENDPOINT_URL", "http://pod:5000")
    monkeypatch.setenv("RUNPOD_MAX_CONCURRENCY", "auto")
    endpoints = load_endpoints(load_settings())
    assert endpoints is not None and endpoints.get(None).cap == AutoBounds(1, 64)
    monkeypatch.setenv("GENQUEUE_AUTO_MIN_CONCURRENCY", "2")
    monkeypatch.setenv("GENQUEUE_AUTO_MAX_CONCURRENCY", "16")
    endpoints = load_endpoints(load_settings())
    assert endpoints is not None and endpoints.get(None).cap == AutoBounds(2, 16)
    monkeypatch.setenv("RUNPOD_MAX_CONCURRENCY", "5")
    endpoints = None
    with pytest.raises(SettingsError) as info:
        load_endpoints(load_settings())
    assert (
        "GENQUEUE_AUTO_MIN_CONCURRENCY: Value error, a bound of the limit is given only with "
        'max_concurrency = "auto"' in str(info.value)
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RUNPOD_MAX_CONCURRENCY": "lots"}, "RUNPOD_MAX_CONCURRENCY: "),
        ({"RUNPOD_MAX_CONCURRENCY": "0"}, "RUNPOD_MAX_CONCURRENCY: "),
        (
            {
                "RUNPOD_MAX_CONCURRENCY": "auto",
                "GENQUEUE_AUTO_MIN_CONCURRENCY": "9",
                "GENQUEUE_AUTO_MAX_CONCURRENCY": "3",
            },
            "GENQUEUE_AUTO_MAX_CONCURRENCY: Value error, auto_max_concurrency (3) is below "
            "auto_min_concurrency (9)",
        ),
    ],
)
def test_bad_variables_are_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    monkeypatch.setenv("RUNPOD_ENDPOINT_URL", "http://pod:5000")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_endpoints(load_settings())
    assert expected in str(info.value)
