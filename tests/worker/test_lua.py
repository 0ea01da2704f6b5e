"""worker.lua: scripts are files, loaded by name, and shipped in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worker import lua


def test_a_script_is_read_by_package_and_name() -> None:
    text = lua.source("worker.delivery", "store_result")
    assert text.startswith("-- ")
    assert "local result_key = KEYS[1]" in text


def test_an_unknown_script_names_what_is_missing() -> None:
    with pytest.raises(FileNotFoundError, match=r"'nope' in worker.delivery/scripts/") as error:
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


@pytest.mark.timeout(300)
def test_the_wheel_ships_every_script(tmp_path: Path) -> None:
    # `pip install .` (the README's first command) installs from a wheel, not from the tree.
    # Built from a clean copy: a build's leftover egg-info would list the scripts by itself.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__")
    )
    subprocess.run(
        # No build isolation: the dev extra installs the setuptools the build wants, and a
        # machine without network (or its package index) still builds.
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(tmp_path / "dist")],
        check=True, timeout=280, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("genqueue-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert _lua_files()
    assert [name for name in _lua_files() if name not in shipped] == []
