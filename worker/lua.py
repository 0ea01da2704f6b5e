"""genqueue's Lua scripts, each in a file of its own, loaded by name.

A package keeps the scripts Redis runs in ``<package>/scripts/<name>.lua`` and the libraries they
include in ``<package>/scripts/lib/<name>.lua``, both shipped with it as package data
(``[tool.setuptools.package-data]`` in pyproject.toml). Each script opens with a comment block
that names its ``KEYS`` and ``ARGV`` and binds them to locals on its first lines, so a reader
meets names, not positions.

A function two scripts share lives in a library, and each script that needs it says so on a
line of its own: ``-- #include worker.limits:slot_take`` is replaced by the text of
``worker/limits/scripts/lib/slot_take.lua`` when the script is loaded (Redis runs one
self-contained script; the function is written once). Only a script is loaded by name, only a
library is included: the folder tells them apart.
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
LIB_DIR = "scripts/lib"
#: ``-- #include package:name`` on a line of its own: ``<package>/scripts/lib/<name>.lua``.
INCLUDE = re.compile(r"^-- #include ([\w.]+):(\w+)$", re.M)


@cache
def source(package: str, name: str) -> str:
    """The text of the script ``name`` of ``package`` (``worker.delivery``, ``task_start``),
    with the files it includes in place."""
    return _included(_read(package, SCRIPTS_DIR, name))


@cache
def library(package: str, name: str) -> str:
    """The text of the library ``name`` of ``package`` (``worker.limits``, ``slot_take``), with
    the libraries it includes in place: what ``-- #include package:name`` stands for."""
    return _included(_read(package, LIB_DIR, name))


def _included(text: str) -> str:
    return INCLUDE.sub(lambda m: library(m.group(1), m.group(2)), text)


def _read(package: str, folder: str, name: str) -> str:
    path = resources.files(package).joinpath(folder, f"{name}.lua")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no Lua file {name!r} in {package}/{folder}/: is its .lua file in the "
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
