"""A TOML file of named tables (``[endpoints.NAME]``, ``[tenants.NAME]``), read and validated
with errors that name the file, the line and the field.

An error never quotes the file: a tenants file holds every tenant's key digests, an endpoints
file its URLs, and the message of a refused reload reaches logs (and, were it ever raised in a
task, a task's error).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from worker.errors import SettingsError

Model = TypeVar("Model", bound=BaseModel)

#: Where tomllib says a problem is: ``(at line 3, column 9)`` or ``(at end of document)``.
_TOML_WHERE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")


def read_named_tables(
    path: Path, table: str, model: type[Model], setting: str
) -> tuple[Model, str]:
    """The file at ``path`` (named by ``setting``) as ``model`` (each ``[table.NAME]`` gets its
    ``name``), and its text; a :class:`SettingsError` naming file, line and field otherwise."""
    text = _read_text(path, setting)
    raw = _parse_toml(path, text)
    entries = raw.get(table)
    if isinstance(entries, dict):
        for name, entry in entries.items():
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


def _read_text(path: Path, setting: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SettingsError(f"{setting}: cannot read {path}: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        # Not ``str(err)``: Python's message is harmless, but the error carries the whole file.
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise SettingsError(
            f"{path}:{line}: not UTF-8 text (byte {column} of the line); TOML files are UTF-8"
        ) from None


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        found = _TOML_WHERE.search(message)
        line = found.group(1) if found and found.group(1) else len(text.splitlines()) or 1
        column = f" (column {found.group(2)})" if found and found.group(2) else ""
        what = _TOML_WHERE.sub("", message)
        raise SettingsError(f"{path}:{line}: not valid TOML: {what}{column}") from None


def line_of(text: str, loc: tuple[int | str, ...]) -> int:
    """The line of the table (and key) at ``loc``: ``[TABLE.NAME]`` then ``key =``.

    ``loc`` is pydantic's error location: the top table (``endpoints``), the entry's name and
    the field. The table's header line when the key is not written (a missing field); the line
    of ``TABLE = ...`` or ``NAME = ...`` in ``[TABLE]`` when the value there is not a table.
    """
    lines = text.splitlines()
    if not loc:
        return 1
    table = re.escape(str(loc[0]))
    if len(loc) == 1:
        return _line_of_key(lines, 0, str(loc[0])) or _line_of_header(lines, table) or 1
    name = re.escape(str(loc[1]))
    header = _line_of_header(lines, rf"{table}\.\"?{name}\"?")
    if header is None:
        inside = _line_of_header(lines, table)
        start = inside or 0
        return _line_of_key(lines, start, str(loc[1])) or inside or 1
    if len(loc) >= 3:
        return _line_of_key(lines, header, str(loc[2])) or header
    return header


def _line_of_header(lines: list[str], pattern: str) -> int | None:
    """The 1-based line of the header ``[pattern]``, if there is one."""
    header = re.compile(rf"^\s*\[\s*{pattern}\s*\]")
    return next((i + 1 for i, line in enumerate(lines) if header.match(line)), None)


def _line_of_key(lines: list[str], start: int, key: str) -> int | None:
    """The 1-based line of ``key =`` in the table whose header is line ``start`` (0: the top
    of the file, before any header)."""
    pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    for i in range(start, len(lines)):
        if lines[i].lstrip().startswith("["):
            break
        if pattern.match(lines[i]):
            return i + 1
    return None
