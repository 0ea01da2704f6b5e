"""What ``genqueue up`` leaves for a second terminal, and how the other commands find it.

``up`` writes ``<data folder>/env`` (0600): ``REDIS_URL`` with the password, ``GENQUEUE_API_URL``
and ``GENQUEUE_API_KEY``, one ``NAME='value'`` a line, which ``set -a; . .genqueue/env; set +a``
loads into a shell and python-dotenv reads alike. Every other ``genqueue`` command reads it
(from the data folder, or ``--env-file``) below the process environment and ``.env``: a
variable set explicitly wins over the file. A command that reads Redis says which one on its
first line when ``REDIS_URL`` was not in its environment.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from pydantic import ValidationError

from genqueue.cli.up_output import hide_password
from genqueue.private_files import write_private_file
from worker.config.settings_loading import load_settings
from worker.errors import SettingsError
from worker.settings import Settings

ENV_FILE_NAME = "env"
#: The user's own ``.env`` (pydantic-settings reads it from the working directory).
DOTENV = Path(".env")
HEADER = (
    "# Written by genqueue up while it runs; load it with: set -a; . {path}; set +a\n"
    "# Every genqueue command run in this folder reads it (variables you set win).\n"
)


def env_file_of(data_dir: Path) -> Path:
    return data_dir / ENV_FILE_NAME


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write ``values`` to ``path`` (0600) as lines a POSIX shell and python-dotenv both load."""
    lines = [f"{name}={shlex.quote(value)}\n" for name, value in values.items()]
    partial = path.with_name(path.name + ".part")
    write_private_file(partial, HEADER.format(path=path) + "".join(lines))
    partial.replace(path)


@dataclass(frozen=True)
class CommandSettings:
    """A command's settings, and the env file they were read with (``None``: none was)."""

    settings: Settings
    env_file: Path | None

    def origin(self, variable: str) -> str | None:
        """Where ``variable``'s value came from, unless from the process environment."""
        if variable in os.environ:
            return None
        if DOTENV.is_file() and dotenv_values(DOTENV).get(variable):
            return f"from {DOTENV}"
        if self.env_file is not None and dotenv_values(self.env_file).get(variable):
            return f"from {self.env_file}, written by genqueue up"
        return "the default"

    def redis_note(self) -> str | None:
        """``Redis <url, password hidden> (<where it came from>)``, unless set explicitly."""
        origin = self.origin("REDIS_URL")
        if origin is None:
            return None
        if origin == "the default":
            here = env_file_of(self.settings.data_dir)
            origin = f"the default: REDIS_URL is unset and there is no {here} (genqueue up)"
        return f"Redis {hide_password(self.settings.redis_url)} ({origin})"


def load_command_settings(env_file: Path | None, read_env_file: bool = True) -> CommandSettings:
    """The settings of a command: the environment, ``.env``, then ``up``'s env file.

    :param env_file: the file given with ``--env-file`` (it must exist); ``None``: the data
        folder's, when there is one.
    :param read_env_file: ``False`` for ``up`` itself (and the bench), which make their own.
    """
    if not read_env_file:
        return CommandSettings(load_settings(), None)
    if env_file is None:
        try:  # where the data folder is (load_settings, below, says what is wrong, once)
            found = env_file_of(Settings().data_dir)
        except ValidationError:
            return CommandSettings(load_settings(), None)
        env_file = found if found.is_file() else None
    elif not env_file.is_file():
        raise SettingsError(f"--env-file {env_file}: no such file")
    if env_file is None:
        return CommandSettings(load_settings(), None)
    return CommandSettings(load_settings(_env_file=(env_file, DOTENV)), env_file)
