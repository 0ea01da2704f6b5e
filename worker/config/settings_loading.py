"""Reading :class:`~worker.settings.Settings` from the environment, as each component starts:
an invalid variable is a :class:`~worker.errors.SettingsError` naming it, and a ``GENQUEUE_*``
variable that sets nothing is logged (:mod:`worker.config.unknown_settings`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dotenv import dotenv_values
from pydantic import ValidationError

from worker.config.unknown_settings import unknown_settings, variables_named_in
from worker.errors import SettingsError
from worker.settings import Settings, env_name

log = logging.getLogger("worker.settings")


def load_settings(**overrides: object) -> Settings:
    """Read the settings; raise :class:`SettingsError` naming each invalid variable, and log a
    warning for each ``GENQUEUE_*`` variable that sets nothing
    (:mod:`worker.config.unknown_settings`)."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise SettingsError(describe_validation_error(err)) from None
    for warning in _unknown_variables(settings):
        log.warning("%s", warning)
    return settings


def _unknown_variables(settings: Settings) -> list[str]:
    """:func:`~worker.config.unknown_settings.unknown_settings` of the environment and the ``.env``
    file, knowing the variables the endpoints and tenants files name."""
    names = set(os.environ)
    env_file = Path(str(Settings.model_config.get("env_file")))
    if env_file.is_file():
        names.update(dotenv_values(env_file))
    named_by_files = variables_named_in(settings.endpoints_file) | variables_named_in(
        settings.tenants_file
    )
    settings_names = [env_name(field) for field in Settings.model_fields]
    return unknown_settings(names, settings_names, also_known=named_by_files)


def describe_validation_error(err: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for problem in err.errors(include_input=False, include_url=False):
        loc = problem["loc"]
        field = str(loc[0]) if loc else ""
        name = env_name(field) if field in Settings.model_fields else (field or "settings")
        lines.append(f"  {name}: {problem['msg']}")
    return "\n".join(lines)
