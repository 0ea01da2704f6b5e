"""Where a value sits in a TOML file of named tables, for errors that name the line."""

from __future__ import annotations

import re


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
