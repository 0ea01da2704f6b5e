"""genqueue's Lua scripts, each in a file of its own, loaded by name.

A package keeps its scripts in ``<package>/scripts/<name>.lua``, shipped with it as package data
(``[tool.setuptools.package-data]`` in pyproject.toml). Each file opens with a comment block that
names its ``KEYS`` and ``ARGV`` and binds them to locals on its first lines, so a reader meets
names, not positions.

A function two scripts share lives in one file too, and each script that needs it says so on a
line of its own: ``-- #include worker.limits:acquire_slot`` is replaced by that file's text when
the script is loaded (Redis runs one self-contained script; the function is written once).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import overload

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script

SCRIPTS_DIR = "scripts"
#: ``-- #include package:name`` on a line of its own.
INCLUDE = re.compile(r"^-- #include ([\w.]+):(\w+)$", re.M)


@cache
def source(package: str, name: str) -> str:
    """The text of the script ``name`` of ``package`` (``worker.delivery``, ``task_start``),
    with the files it includes in place."""
    return INCLUDE.sub(lambda m: source(m.group(1), m.group(2)), _read(package, name))


def _read(package: str, name: str) -> str:
    path = resources.files(package).joinpath(SCRIPTS_DIR, f"{name}.lua")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no Lua script {name!r} in {package}/{SCRIPTS_DIR}/: is its .lua file in the "
            "package data (pyproject.toml)?"
        ) from None


@overload
def register(client: aioredis.Redis, package: str, name: str) -> AsyncScript: ...
@overload
def register(client: redis.Redis, package: str, name: str) -> Script: ...
def register(client: redis.Redis | aioredis.Redis, package: str, name: str) -> Script | AsyncScript:
    """The script ``name`` of ``package``, registered with ``client`` (``EVALSHA``, then ``EVAL``
    when Redis does not know it yet)."""
    return client.register_script(source(package, name))
