"""worker.lua: scripts are files, loaded by name (shipped in the wheel: tests/e2e/test_wheel.py)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT
from worker import lua


def test_a_script_is_read_by_package_and_name() -> None:
    text = lua.source("worker.delivery", "store_result")
    assert text.startswith("-- ")
    assert "local result_key = KEYS[1]" in text


def test_an_unknown_script_names_what_is_missing() -> None:
    with pytest.raises(FileNotFoundError, match=r"'nope' in worker.delivery/scripts/:") as error:
        lua.source("worker.delivery", "nope")
    assert "package data" in str(error.value)


def _lua_files() -> list[str]:
    return sorted(
        path.relative_to(ROOT).as_posix()
        for package in ("worker", "api_producer", "genqueue")
        for path in (ROOT / package).rglob("*.lua")
    )


def test_every_script_opens_with_its_keys_and_arguments_named() -> None:
    for name in _lua_files():
        head = (ROOT / name).read_text(encoding="utf-8").splitlines()[0]
        assert head.startswith("-- "), name


def test_a_library_is_included_not_loaded() -> None:
    assert "local function acquire_slot(" in lua.library("worker.limits", "slot_take")
    with pytest.raises(FileNotFoundError, match=r"'slot_take' in worker.limits/scripts/:"):
        lua.source("worker.limits", "slot_take")


def test_the_folder_tells_a_library_from_a_script() -> None:
    included = {
        f"{package.replace('.', '/')}/scripts/lib/{name}.lua"
        for path in _lua_files()
        for package, name in lua.INCLUDE.findall((ROOT / path).read_text(encoding="utf-8"))
    }
    libraries = {path for path in _lua_files() if "/scripts/lib/" in path}
    assert included == libraries


#: ``local a, b = KEYS[1], tonumber(ARGV[2])`` or ``{admit = KEYS[2], ...}``: a script's names
#: for its keys and arguments, as its first lines bind them.
POSITION = re.compile(r"^(?:\w+\()?(KEYS|ARGV)\[(\d+)\](?: or '\w*')?\)?$")
FIELD = re.compile(r"(\w+) = (KEYS|ARGV)\[(\d+)\]")


def _bindings(text: str) -> set[tuple[str, int, str]]:
    """Each ``(KEYS or ARGV, position, local name)`` a script's own text binds."""
    found: set[tuple[str, int, str]] = set()
    for line in text.splitlines():
        if line.startswith("local ") and " = " in line and "{" not in line:
            names, values = line[len("local ") :].split(" = ", 1)
            for name, value in zip(names.split(", "), values.split(", "), strict=False):
                if match := POSITION.match(value.strip()):
                    found.add((match[1], int(match[2]), name.strip()))
        if "{" in line:
            for name, kind, index in FIELD.findall(line):
                found.add((kind, int(index), name))
    return found


def _covering(slots: tuple[lua.Slot, ...], index: int) -> lua.Slot | None:
    for slot in slots:
        if slot.first <= index and (slot.size is None or index < slot.first + slot.size):
            return slot
    return None


def _scripts() -> list[tuple[str, str]]:
    return [
        (path.split("/scripts/")[0].replace("/", "."), path.rsplit("/", 1)[1][: -len(".lua")])
        for path in _lua_files()
        if "/scripts/lib/" not in path
    ]


@pytest.mark.parametrize(("package", "name"), _scripts())
def test_a_scripts_header_names_what_its_first_lines_bind(package: str, name: str) -> None:
    spec = lua.spec(package, name)
    bound = _bindings(lua._read(package, lua.SCRIPTS_DIR, name))
    named = {(kind, index): local for kind, index, local in bound}
    assert {(kind, index, local) for (kind, index), local in named.items()} == bound, bound
    slots = {("KEYS", slot.first): slot for slot in spec.keys}
    slots |= {("ARGV", slot.first): slot for slot in spec.args}
    for (kind, index), local in named.items():
        slot = _covering(spec.keys if kind == "KEYS" else spec.args, index)
        assert slot is not None, f"{kind}[{index}] {local} is not in the header"
        if slot.size == 1:  # a group's values are passed whole, its members named in its lines
            assert slot.name == local, (
                f"the header names {kind}[{index}] {slot.name}, the code {local}"
            )
    single = {(kind, first) for (kind, first), slot in slots.items() if slot.size == 1}
    assert single <= set(named), f"named in the header, bound to no local: {single - set(named)}"
    assert spec.keys or spec.args, "a script's header names its KEYS and ARGV"


SPEC = lua.ScriptSpec(
    "demo",
    keys=(lua.Slot("record_key", 1), lua.Slot("queues", 2, None)),
    args=(
        lua.Slot("ttl_s", 1),
        lua.Slot("offer", 2, 2, optional=True),
        lua.Slot("cost", 4, 1, True),
    ),
)


def test_a_call_by_name_is_put_in_the_headers_order() -> None:
    keys, args = SPEC.order(
        {"queues": ["a", "b"], "record_key": "r"}, {"cost": 3, "offer": (1, 2), "ttl_s": 9}
    )
    assert (keys, args) == (["r", "a", "b"], [9, 1, 2, 3])
    assert SPEC.order({"record_key": "r", "queues": []}, {"ttl_s": 9}) == (["r"], [9])


@pytest.mark.parametrize(
    ("keys", "args", "error"),
    [
        ({"queues": []}, {"ttl_s": 1}, "demo.lua needs its KEYS record_key"),
        ({"record_key": "r", "queues": [], "lease": "l"}, {"ttl_s": 1}, "takes no KEYS lease"),
        ({"record_key": "r", "queues": []}, {"ttl_s": 1, "offer": [1]}, "takes 2 ARGV as offer"),
        ({"record_key": "r", "queues": []}, {"ttl_s": 1, "cost": 1}, "cost only after offer"),
        (["r"], {"ttl_s": 1}, "takes its KEYS by name, not as a list"),
        ({"record_key": "r", "queues": "ab"}, {"ttl_s": 1}, "KEYS queues as a list"),
    ],
)
def test_a_call_missing_a_name_or_with_one_too_many_is_refused(
    keys: dict[str, object], args: dict[str, object], error: str
) -> None:
    with pytest.raises(lua.ScriptArgumentError, match=error):
        SPEC.order(keys, args)


def test_the_spec_is_read_from_the_scripts_header() -> None:
    spec = lua.spec("worker.delivery", "fetch")
    assert [slot.name for slot in spec.keys][:3] == [
        "unacked_key",
        "unacked_index_key",
        "unreadable_key",
    ]
    assert spec.keys[3].size is None
    assert spec.args[0].name == "want"


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ("-- KEYS[1] a\n-- KEYS[3] b\n", r"names KEYS\[3\] where KEYS\[2\] goes"),
        ("-- ARGV[1+] rest\n-- ARGV[2] more\n", r"names ARGV\[2\] after the rest, rest"),
        ("-- ARGV[1]? a\n-- ARGV[2] b\n", "ARGV b follows an optional one"),
    ],
)
def test_a_header_out_of_order_is_refused(header: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        lua.parse_spec("demo", header)


def test_a_header_that_disagrees_with_its_locals_is_caught() -> None:
    text = "-- KEYS[1]  lease\n-- ARGV[1]  ttl_ms\nlocal lease, ttl = KEYS[1], tonumber(ARGV[1])\n"
    spec = lua.parse_spec("demo", text)
    bound = {local for _kind, _index, local in _bindings(text)}
    assert {slot.name for slot in (*spec.keys, *spec.args)} - bound == {"ttl_ms"}


def test_a_library_names_no_keys_or_arguments() -> None:
    for path in _lua_files():
        if "/scripts/lib/" in path:
            assert lua.NAMED.findall((ROOT / path).read_text(encoding="utf-8")) == [], path
