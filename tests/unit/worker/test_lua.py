"""worker.lua: scripts are files, loaded by name (shipped in the wheel: tests/e2e/test_wheel.py)."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from worker import lua


def test_a_script_is_read_by_package_and_name() -> None:
    text = lua.source("worker.delivery", "store_result")
    assert text.startswith("-- ")
    assert "local result_key = KEYS[1]" in text


def test_an_unknown_script_names_what_is_missing() -> None:
    with pytest.raises(FileNotFoundError, match=r"'nope' in worker.delivery/scripts/:") as error:
        lua.source("worker.delivery", "nope")
    assert "package data" in str(error.value)


def _lua_files() -> list[str]:
    return sorted(
        path.relative_to(ROOT).as_posix()
        for package in ("worker", "api_producer", "genqueue")
        for path in (ROOT / package).rglob("*.lua")
    )


def test_every_script_opens_with_its_keys_and_arguments_named() -> None:
    for name in _lua_files():
        head = (ROOT / name).read_text(encoding="utf-8").splitlines()[0]
        assert head.startswith("-- "), name


def test_a_library_is_included_not_loaded() -> None:
    assert "local function acquire_slot(" in lua.library("worker.limits", "slot_take")
    with pytest.raises(FileNotFoundError, match=r"'slot_take' in worker.limits/scripts/:"):
        lua.source("worker.limits", "slot_take")


def test_the_folder_tells_a_library_from_a_script() -> None:
    included = {
        f"{package.replace('.', '/')}/scripts/lib/{name}.lua"
        for path in _lua_files()
        for package, name in lua.INCLUDE.findall((ROOT / path).read_text(encoding="utf-8"))
    }
    libraries = {path for path in _lua_files() if "/scripts/lib/" in path}
    assert included == libraries
