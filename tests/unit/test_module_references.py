"""Every module and file the docs and docstrings name exists: a dotted reference (``worker.x.y``,
``genqueue.x``, ``api_producer.x``, maybe ending in an attribute: ``worker.x.Name``) resolves to
a module of the tree and its attribute, a path (``worker/x/y.py``, ``tests/...py``,
``scripts/...``) to a file or folder of the repository.

Scanned: the docstrings and comments of worker/, api_producer/, genqueue/ and tests/ (this file
aside: its examples are made up), README.md, BENCHMARKS.md, docs/*.md, pyproject.toml, .ci/run
and scripts/test."""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from worker.contract import TASK_NAME
from worker.webhooks.sender import WEBHOOK_TASK_NAME

PACKAGES = ("worker", "api_producer", "genqueue")
DOTTED = re.compile(r"(?<![\w.:/-])((?:worker|api_producer|genqueue)(?:\.[A-Za-z_]\w*)+)")
PATH = re.compile(
    r"(?<![\w./~-])((?:worker|api_producer|genqueue|tests|scripts)/[\w./-]*[\w/])(?![\w-]*\()"
)
#: The tooling's files, read whole: their comments name modules and tests too.
TOOLING = ("pyproject.toml", ".ci/run", "scripts/test")
#: A name ending so is a file's (``worker.log``, ``worker.py``), not a dotted reference.
FILE_SUFFIXES = {"py", "log", "lua", "md", "toml", "json", "yml", "yaml", "txt", "env"}
LOGGER = re.compile(r'(?:getLogger\(|_LOGGER = )\s*"([\w.]+)"')


def _not_modules() -> set[str]:
    """Dotted names that are no module: the tasks' names and the loggers' (read from the code)."""
    names = {TASK_NAME, WEBHOOK_TASK_NAME}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names.update(LOGGER.findall(path.read_text(encoding="utf-8")))
    return names


NOT_MODULES = _not_modules()


def _docstrings_and_comments(path: Path) -> Iterator[str]:
    source = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node, clean=False)
            if text:
                yield text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.string


def _texts() -> Iterator[tuple[Path, str]]:
    for folder in (*PACKAGES, "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != Path(__file__).resolve():
                for text in _docstrings_and_comments(path):
                    yield path, text
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in [*pages, *(ROOT / name for name in TOOLING)]:
        yield page, page.read_text(encoding="utf-8")


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _has(obj: Any, name: str) -> bool:
    if hasattr(obj, name):
        return True
    fields = getattr(obj, "model_fields", None)  # a pydantic model's fields are no attributes
    return isinstance(fields, dict) and name in fields


def _resolves(dotted: str) -> bool:
    if dotted in NOT_MODULES or dotted.rsplit(".", 1)[1] in FILE_SUFFIXES:
        return True
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if not _is_module(module):
            continue
        obj: Any = importlib.import_module(module)
        for name in parts[cut:]:
            if not _has(obj, name):
                return False
            obj = getattr(obj, name, None)
        return True
    return False


def _path_exists(path: str, beside: Path = ROOT) -> bool:
    """``path`` from the repository's root, or from the folder of the module that names it
    (``scripts/fetch.lua`` in worker/delivery/)."""
    return any((base / path.rstrip("/.")).exists() for base in (ROOT, beside))


def _broken() -> Iterator[str]:
    for source, text in _texts():
        where = source.relative_to(ROOT).as_posix()
        for dotted in DOTTED.findall(text):
            if not _resolves(dotted):
                yield f"{where}: {dotted}"
        for path in PATH.findall(text):
            if not _path_exists(path, source.parent):
                yield f"{where}: {path}"


def test_every_module_and_file_named_exists() -> None:
    assert sorted(set(_broken())) == []


def test_a_broken_reference_is_found() -> None:
    assert _resolves("worker.settings.Settings.redis_url")
    assert _resolves("worker.limits.guard")
    assert not _resolves("worker.faults")
    assert not _resolves("worker.settings.NoSuchName")
    assert _path_exists("worker/limits/guard.py")
    assert not _path_exists("genqueue/bench.py")
    assert _path_exists("scripts/fetch.lua", ROOT / "worker" / "delivery")
    assert not _path_exists("scripts/fetch.lua")
    assert _resolves("genqueue.task")  # a logger
    assert DOTTED.findall("see worker.keys.") == ["worker.keys"]
    assert PATH.findall("in `tests/unit/test_docs.py`.") == ["tests/unit/test_docs.py"]
