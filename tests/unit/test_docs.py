"""The README matches the code: every setting documented, the two fresh-machine commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme(field: str) -> None:
    assert f"`{env_name(field)}`" in README


def test_first_screen_has_the_two_commands() -> None:
    first_screen = README.split("## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", first_screen)
    assert len(commands) == 2
    assert commands[0].endswith("genqueue up")
    assert commands[1].endswith("scripts/test")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nscripts/test --real-servers\n" in ci
    assert 'pip install -q -e ".[dev,real-servers]"' in ci
    # The README says how to run the same group.
    assert "scripts/test --real-servers" in README
    assert "pip install -e '.[dev,real-servers]'" in README
