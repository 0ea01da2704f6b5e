"""A TOML file of named tables (``[endpoints.NAME]``, ``[tenants.NAME]``), read and validated
with errors that name the file, the line and the field."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from worker.errors import SettingsError

Model = TypeVar("Model", bound=BaseModel)


def read_named_tables(
    path: Path, table: str, model: type[Model], setting: str
) -> tuple[Model, str]:
    """The file at ``path`` (named by ``setting``) as ``model`` (each ``[table.NAME]`` gets its
    ``name``), and its text; a :class:`SettingsError` naming file, line and field otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SettingsError(f"{setting}: cannot read {path}: {err.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SettingsError(f"{path}: {err}") from None
    for name, entry in (raw.get(table) or {}).items():
        if isinstance(entry, dict):
            entry.setdefault("name", name)
    try:
        return model.model_validate(raw), text
    except ValidationError as err:
        problems = [
            f"{path}:{line_of(text, problem['loc'])}: "
            f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}"
            for problem in err.errors(include_input=False, include_url=False)
        ]
        raise SettingsError(f"invalid {table} file:\n  " + "\n  ".join(problems)) from None


def line_of(text: str, loc: tuple[int | str, ...]) -> int:
    """The line of the table (and key) at ``loc``: ``[TABLE.NAME]`` then ``key =``.

    ``loc`` is pydantic's error location: the top table (``endpoints``), the entry's name and
    the field. The table's header line when the key is not written (a missing field).
    """
    lines = text.splitlines()
    start = 0
    if len(loc) >= 2:
        table, name = re.escape(str(loc[0])), re.escape(str(loc[1]))
        header = re.compile(rf"^\s*\[\s*{table}\.\"?{name}\"?\s*\]")
        start = next((i for i, line in enumerate(lines) if header.match(line)), 0)
    if len(loc) >= 3:
        key = re.compile(rf"^\s*{re.escape(str(loc[2]))}\s*=")
        for i in range(start + 1, len(lines)):
            if lines[i].lstrip().startswith("["):
                break
            if key.match(lines[i]):
                return i + 1
    return start + 1
