"""The tests' layout, as docs/development.md says where a new test goes: four folders at the top
of tests/, unit tests at the path of the module they test and free of real parts, no two test
files of one name."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from tests.conftest import ROOT

TESTS = ROOT / "tests"
KINDS = {"unit", "integration", "e2e", "real_servers"}
PACKAGES = {"worker", "api_producer", "genqueue"}
#: The root conftest's fixtures that bring a real part: Redis, a process, a server.
REAL_FIXTURES = {
    "redis_server",
    "redis_url",
    "other_redis_url",
    "redis_client",
    "suite_databases",
    "simulator",
    "start_worker",
    "celery_client",
}


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and p.name != "__pycache__")


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts)


def test_tests_has_only_the_four_kinds_at_its_top() -> None:
    assert [p.name for p in _folders(TESTS) if p.name not in KINDS] == []
    # Beside them, only the root conftest and the helpers it shares: no test.
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []


def test_no_two_test_files_share_a_name() -> None:
    counts = Counter(p.name for p in _test_files())
    twice = {
        name: [p.relative_to(ROOT).as_posix() for p in _test_files() if p.name == name]
        for name, count in counts.items()
        if count > 1
    }
    assert twice == {}


def test_unit_folders_mirror_the_package_tree() -> None:
    mirrored = [
        folder.relative_to(TESTS / "unit")
        for folder in (TESTS / "unit").rglob("*")
        if folder.is_dir() and folder.name != "__pycache__"
    ]
    assert [f.as_posix() for f in mirrored if not (ROOT / f / "__init__.py").is_file()] == []
    assert {f.parts[0] for f in mirrored} <= PACKAGES


def _real_parts(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [f"{node.name}({a.arg})" for a in node.args.args if a.arg in REAL_FIXTURES]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names]
            found += [f"import {name}" for name in names if name == "subprocess"]
    return found


def test_unit_tests_start_no_redis_process_or_server() -> None:
    real = {
        path.relative_to(ROOT).as_posix(): parts
        for path in sorted((TESTS / "unit").rglob("*.py"))
        if (parts := _real_parts(path))
    }
    assert real == {}


def test_development_page_says_where_a_new_test_goes() -> None:
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    section = page.split("## Where a new test goes", 1)[1].split("\n## ", 1)[0]
    for kind in KINDS:
        assert f"`tests/{kind}/" in section, kind
    # The example it gives is a real test at the path of a real module.
    assert "`tests/unit/worker/pipeline/test_backoff.py`" in section
    assert (TESTS / "unit" / "worker" / "pipeline" / "test_backoff.py").is_file()
    assert "`worker/pipeline/backoff.py`" in section
    assert (ROOT / "worker" / "pipeline" / "backoff.py").is_file()
    assert "tests/unit/test_test_layout.py" in section
    # The end-to-end tests it names are there.
    for named, test in [
        ("`genqueue up`", "test_up.py"),
        ("the compose file", "test_compose.py"),
        ("the wheel", "test_wheel.py"),
        ("a docs example", "test_plain_celery_docs.py"),
    ]:
        assert named in section and (TESTS / "e2e" / test).is_file(), test
