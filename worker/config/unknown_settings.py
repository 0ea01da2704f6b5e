"""Misspelled settings: a ``GENQUEUE_*`` variable that sets nothing, said at every start.

pydantic-settings ignores a variable (or ``.env`` entry) that names no field, so
``GENQUEUE_RETRY_MAX_ATTEMPS=2`` would leave the default in place without a word.
:func:`unknown_settings` names each such variable and the setting it probably meant;
:func:`worker.config.settings_loading.load_settings` logs what it finds, so every component
(worker, API, Flower, ``genqueue up`` and every command) says it when it starts, and starts
anyway.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

PREFIX = "GENQUEUE_"
#: ``GENQUEUE_*`` variables genqueue reads that are not settings, and what reads each.
OTHER_VARIABLES = {
    "GENQUEUE_TEST_REDIS_URL": "the test suite: an outside Redis (tests/suite_redis.py)",
    "GENQUEUE_TEST_REAL_SERVERS": "the test suite: the real-server tests (tests/real_servers)",
}
#: How alike a name and a setting must be for the setting to be suggested (difflib's ratio).
SIMILARITY_CUTOFF = 0.6
#: The fields of the endpoints and tenants files that name a variable (``api_key_env``, ...).
VARIABLE_FIELD_SUFFIX = "_env"


def unknown_settings(
    names: Iterable[str], settings: Iterable[str], also_known: Iterable[str] = ()
) -> list[str]:
    """A warning for each ``GENQUEUE_*`` name of ``names`` that is none of ``settings`` (the
    settings' variables), :data:`OTHER_VARIABLES` or ``also_known``, naming the closest
    setting. Names compare as pydantic-settings reads them, regardless of case."""
    candidates = sorted({name.upper() for name in settings})
    known = {*candidates, *OTHER_VARIABLES, *(name.upper() for name in also_known)}
    warnings = []
    for name in sorted(set(names)):
        if name.upper().startswith(PREFIX) and name.upper() not in known:
            warnings.append(_warning(name, candidates))
    return warnings


def _warning(name: str, candidates: list[str]) -> str:
    said = f"{name} is not a genqueue setting and is ignored"
    closest = _closest(name.upper(), candidates)
    if closest is None:
        return f"{said} (the settings are listed in docs/configuration.md)"
    return f"{said}: did you mean {closest}?"


def _closest(name: str, candidates: list[str]) -> str | None:
    """The setting most like ``name``, compared without the prefix they share (which would
    make any two names alike), so that ``GENQUEUE_REDIS_URL`` finds ``REDIS_URL``."""
    by_stem = {candidate.removeprefix(PREFIX): candidate for candidate in candidates}
    found = difflib.get_close_matches(
        name.removeprefix(PREFIX), list(by_stem), n=1, cutoff=SIMILARITY_CUTOFF
    )
    return by_stem[found[0]] if found else None


def variables_named_in(path: Path | None) -> set[str]:
    """The variables a TOML file (the endpoints or tenants file) names in its ``*_env`` fields;
    none when it cannot be read (its own loader says why)."""
    if path is None:
        return set()
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return set()
    return set(_variable_fields(document))


def _variable_fields(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).endswith(VARIABLE_FIELD_SUFFIX) and isinstance(item, str):
                yield item
            else:
                yield from _variable_fields(item)
    elif isinstance(value, list):
        for item in value:
            yield from _variable_fields(item)
