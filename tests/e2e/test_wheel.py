"""The wheel ``pip install .`` builds ships every Lua script (worker.lua reads them as package
data)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.unit.worker.test_lua import _lua_files


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
