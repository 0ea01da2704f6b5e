"""genqueue's Lua scripts, each in a file of its own, loaded by name.

A package keeps the scripts Redis runs in ``<package>/scripts/<name>.lua`` and the libraries they
include in ``<package>/scripts/lib/<name>.lua``, both shipped with it as package data
(``[tool.setuptools.package-data]`` in pyproject.toml). Each script opens with a comment block
that names its ``KEYS`` and ``ARGV`` and binds them to locals on its first lines, so a reader
meets names, not positions.

That block is the script's :class:`ScriptSpec`, the one place its ``KEYS`` and ``ARGV`` are
declared: a line ``-- KEYS[1]  record_key  ...`` names a position (``[8..16]`` a group passed
as one sequence, ``[4+]`` the rest, a ``?`` after the bracket one a call may leave out), and
:func:`named` calls the script by those names, refusing one missing or unknown
(tests/unit/worker/test_lua.py holds each header to the locals its script binds). What a script
answers is decoded beside it, in its package's ``script_replies`` module, so callers read names,
not codes.

A function two scripts share lives in a library, and each script that needs it says so on a
line of its own: ``-- #include worker.limits:slot_take`` is replaced by the text of
``worker/limits/scripts/lib/slot_take.lua`` when the script is loaded (Redis runs one
self-contained script; the function is written once). Only a script is loaded by name, only a
library is included: the folder tells them apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, overload

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


#: A line of a script's header that names one of its ``KEYS`` or ``ARGV``: ``-- KEYS[1]  name``,
#: ``-- ARGV[8..16] name`` (a group of that many, passed as one sequence), ``-- KEYS[4+] name``
#: (the rest, any number: the last), each with ``?`` after it when it may be left out (then so
#: is every one after it).
NAMED = re.compile(r"^-- (KEYS|ARGV)\[(\d+)(?:\.\.(\d+)|(\+))?\](\?)?\s+(\w+)", re.M)


@dataclass(frozen=True)
class Slot:
    """One name of a script's ``KEYS`` or ``ARGV``: ``size`` values from position ``first``
    (1 for a value of its own, None for the rest), which a call may leave out if ``optional``."""

    name: str
    first: int
    size: int | None = 1
    optional: bool = False


@dataclass(frozen=True)
class ScriptSpec:
    """What a script takes, by name, in the order Redis sees it: read from its header."""

    name: str
    keys: tuple[Slot, ...]
    args: tuple[Slot, ...]

    def order(
        self, keys: Mapping[str, Any], args: Mapping[str, Any]
    ) -> tuple[list[Any], list[Any]]:
        """``keys`` and ``args`` by name as Redis's ``KEYS`` and ``ARGV``; a name missing or
        unknown raises :class:`ScriptArgumentError`."""
        return self._place("KEYS", self.keys, keys), self._place("ARGV", self.args, args)

    def _place(self, kind: str, slots: tuple[Slot, ...], given: Mapping[str, Any]) -> list[Any]:
        if not isinstance(given, Mapping):
            raise ScriptArgumentError(
                f"{self.name}.lua takes its {kind} by name, not as a {type(given).__name__}"
            )
        unknown = sorted(set(given) - {slot.name for slot in slots})
        if unknown:
            raise ScriptArgumentError(f"{self.name}.lua takes no {kind} {', '.join(unknown)}")
        out: list[Any] = []
        left_out: Slot | None = None
        for slot in slots:
            if slot.name not in given:
                if not slot.optional:
                    raise ScriptArgumentError(f"{self.name}.lua needs its {kind} {slot.name}")
                left_out = left_out or slot
                continue
            if left_out is not None:
                raise ScriptArgumentError(
                    f"{self.name}.lua takes its {kind} {slot.name} only after {left_out.name}"
                )
            value = given[slot.name]
            if slot.size == 1:
                out.append(value)
                continue
            if isinstance(value, str | bytes):
                raise ScriptArgumentError(f"{self.name}.lua takes its {kind} {slot.name} as a list")
            values = list(value)
            if slot.size is not None and len(values) != slot.size:
                raise ScriptArgumentError(
                    f"{self.name}.lua takes {slot.size} {kind} as {slot.name}, not {len(values)}"
                )
            out += values
        return out


class ScriptArgumentError(TypeError):
    """Raised when a script is called with a key or argument its header does not name, or
    without one it needs."""


@cache
def spec(package: str, name: str) -> ScriptSpec:
    """The :class:`ScriptSpec` of the script ``name`` of ``package``, read from the header of
    its own file (its libraries name no ``KEYS`` or ``ARGV``)."""
    return parse_spec(name, _read(package, SCRIPTS_DIR, name))


def parse_spec(name: str, text: str) -> ScriptSpec:
    """The :class:`ScriptSpec` the header of ``text`` (the script ``name``) declares; a
    position named out of its order, or a needed one after one that may be left out, raises
    :class:`ValueError`."""
    found: dict[str, list[Slot]] = {"KEYS": [], "ARGV": []}
    for kind, first, last, rest, optional, slot_name in NAMED.findall(text):
        slots = found[kind]
        if slots and slots[-1].size is None:
            raise ValueError(f"{name}.lua names {kind}[{first}] after the rest, {slots[-1].name}")
        expected = slots[-1].first + (slots[-1].size or 0) if slots else 1
        if int(first) != expected:
            raise ValueError(f"{name}.lua names {kind}[{first}] where {kind}[{expected}] goes")
        if slots and slots[-1].optional and not optional:
            raise ValueError(f"{name}.lua: {kind} {slot_name} follows an optional one")
        size = None if rest else int(last) - int(first) + 1 if last else 1
        slots.append(Slot(slot_name, int(first), size, bool(optional)))
    return ScriptSpec(name, tuple(found["KEYS"]), tuple(found["ARGV"]))


class Named:
    """A script called by the names of its ``KEYS`` and ``ARGV`` (its :class:`ScriptSpec`):
    ``script(keys={"record_key": ...}, args={"ttl_s": ...})``, on ``client`` (a pipeline) if
    given. Its reply is Redis's, to decode where the script's replies are typed."""

    def __init__(self, script: Script | AsyncScript, spec: ScriptSpec) -> None:
        self.script = script
        self.spec = spec

    @property
    def registered_client(self) -> Any:
        """The client the script was registered with."""
        return self.script.registered_client

    def __call__(self, keys: Mapping[str, Any], args: Mapping[str, Any], client: Any = None) -> Any:
        ordered_keys, ordered_args = self.spec.order(keys, args)
        return self.script(keys=ordered_keys, args=ordered_args, client=client)


def named(client: redis.Redis | aioredis.Redis, package: str, name: str) -> Named:
    """The script ``name`` of ``package``, registered with ``client`` and called by name."""
    return Named(register(client, package, name), spec(package, name))
