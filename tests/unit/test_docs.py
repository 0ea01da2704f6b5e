"""The README and docs/ match the code: settings, variables, links, and what the pages show.

Every page is read as it is: a setting documented twice, a variable that does not exist, a
link to a moved page or a heading renamed, a template or log line that reads otherwise than the
code writes it, fails here.
"""

from __future__ import annotations

import ast
import contextvars
import importlib
import json
import logging
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import ROOT
from worker.contract import RESERVED_PARAMS, GenerationRequest, GenerationResult, Usage
from worker.observability.metrics import (
    CURRENT_ENDPOINT,
    TASK_LOGGER,
    JsonFormatter,
    TaskObserver,
    WorkerMetrics,
)
from worker.pipeline.render import BUILTIN_SOURCES, PromptRenderer
from worker.settings import Settings, env_name

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
PAGE_IDS = [str(page.relative_to(ROOT)) for page in PAGES]
SETTINGS = {env_name(field) for field in Settings.model_fields}

#: Variables the pages name that are not genqueue settings, and the file that reads each.
NON_SETTINGS = {
    "REDIS_PASSWORD": "docker-compose.yml",
    "GENQUEUE_TEST_REDIS_URL": "tests/suite_redis.py",
    "GENQUEUE_TEST_REAL_SERVERS": "tests/real_servers/conftest.py",
}
#: Misspelled settings whose warning docs/configuration.md shows (test_unknown_settings.py).
MISSPELLED_EXAMPLES = {"GENQUEUE_RETRY_MAX_ATTEMPS", "GENQUEUE_REDIS_URL"}
#: Rows of the settings table that are not genqueue settings (Flower reads its own).
NON_SETTING_ROWS = {"FLOWER_*"}

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_VARIABLE = re.compile(r"\b(?:GENQUEUE|RUNPOD|REDIS)_[A-Z0-9_]*[A-Z0-9]\b")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _text(page: Path) -> str:
    return page.read_text()


def _prose(page: Path) -> str:
    """The page without its fenced code blocks."""
    return _FENCE.sub("", _text(page))


def _section(page: Path, heading: str) -> str:
    """The text under ``heading`` up to the next heading of its level or above."""
    text = _text(page)
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    ends = [text.find(f"\n{'#' * n} ", start) for n in range(1, len(level) + 1)]
    ends = [end for end in ends if end != -1]
    return text[start : min(ends)] if ends else text[start:]


# --------------------------------------------------------------------------- first screen


def test_first_screen_has_the_two_commands() -> None:
    first_screen = _text(README).split("## ", 1)[0]
    commands = re.findall(r"```sh\n(.+?)\n```", first_screen)
    assert len(commands) == 2
    assert commands[0].endswith("genqueue up")
    assert commands[1].endswith("scripts/test")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nscripts/test --real-servers\n" in ci
    assert 'pip install -q -e ".[dev,real-servers]"' in ci
    # docs/development.md says how to run the same group.
    development = _text(DOCS / "development.md")
    assert "scripts/test --real-servers" in development
    assert "pip install -e '.[dev,real-servers]'" in development


def test_readme_links_every_page_of_docs() -> None:
    readme = _text(README)
    for page in sorted(DOCS.glob("*.md")):
        assert f"](docs/{page.name})" in readme, page.name


def test_pyproject_readme_is_the_readme() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^readme = "README\.md"$', pyproject, re.M)


# --------------------------------------------------------------------------- settings


def _settings_table() -> list[set[str]]:
    """The variables of each row of the one settings table, docs/configuration.md."""
    rows = []
    in_table = False
    for line in _text(DOCS / "configuration.md").splitlines():
        if line.startswith("| variable | default | meaning |"):
            assert not in_table and not rows, "one settings table"
            in_table = True
        elif in_table and line.startswith("|"):
            first_cell = line.split("|")[1]
            if not set(first_cell.strip()) <= set("-"):
                rows.append(set(re.findall(r"`([^`]+)`", first_cell)))
        elif in_table:
            in_table = False
    return rows


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_settings_table_once(field: str) -> None:
    rows = _settings_table()
    assert sum(env_name(field) in row for row in rows) == 1


def test_the_settings_table_names_only_settings() -> None:
    named = set().union(*_settings_table())
    assert named - SETTINGS == NON_SETTING_ROWS


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_variable_named_exists(page: Path) -> None:
    named = set(_VARIABLE.findall(_text(page)))
    if page == DOCS / "configuration.md":
        named -= MISSPELLED_EXAMPLES
    assert named - SETTINGS <= set(NON_SETTINGS)


@pytest.mark.parametrize(("variable", "reader"), sorted(NON_SETTINGS.items()))
def test_non_settings_are_read_where_documented(variable: str, reader: str) -> None:
    assert variable in (ROOT / reader).read_text()


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(page).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _resolves(page: Path, target: str) -> bool:
    """A relative link names a file of the repository and, if it has one, a heading there."""
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    if not linked.exists() or ROOT not in linked.parents:
        return False
    return not anchor or (linked.suffix == ".md" and anchor in _anchors(linked))


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_relative_link_resolves(page: Path) -> None:
    targets = [t for t in _LINK.findall(_prose(page)) if not re.match(r"[a-z]+:", t)]
    assert [target for target in targets if not _resolves(page, target)] == []


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_repository_path_named_exists(page: Path) -> None:
    named = re.findall(r"`((?:worker|api_producer|genqueue|bench|tests|scripts|docs)/[^`*<]*)`",
                       _text(page))  # fmt: skip
    # A command line names its script first: `scripts/test --real-servers`.
    paths = [path.split()[0] for path in named]
    assert [path for path in paths if not (ROOT / path).exists()] == []


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_python_examples_import_what_exists(page: Path) -> None:
    for block in re.findall(r"^```python\n(.*?)^```", _text(page), re.S | re.M):
        for node in ast.walk(ast.parse(block)):
            own = isinstance(node, ast.ImportFrom) and node.module is not None
            if own and node.module.split(".")[0] in ("worker", "api_producer", "genqueue"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


# --------------------------------------------------------------------------- what pages show


def test_reserved_params_are_the_contracts() -> None:
    request = _section(DOCS / "http-api.md", "## Calls")
    match = re.search(r"((?:`\w+`,?\s+)+and\s+`\w+`)\s+are\s+genqueue's\s+own", request)
    assert match is not None
    assert set(re.findall(r"`(\w+)`", match.group(1))) == RESERVED_PARAMS


def test_builtin_templates_render_as_documented() -> None:
    section = _section(DOCS / "http-api.md", "## Prompt templates")
    chatml = re.search(r"^```\n(.*?)\n```", section, re.S | re.M)
    assert chatml is not None
    documented = {"chatml": chatml.group(1)}
    built_in = section[section.index("Also built in") : section.index("Operators add")]
    documented.update(re.findall(r"`(\w+)`\s+\(`([^`]+)`", built_in))
    assert set(documented) == set(BUILTIN_SOURCES)
    renderer = PromptRenderer()
    for name, shown in documented.items():
        request = GenerationRequest(prompt="P", system="S", template=name)
        assert renderer.render(request) == shown.replace("\\n", "\n"), name


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _logged_success() -> logging.LogRecord:
    """The line a worker writes for the task of the documented example."""
    observer = TaskObserver(WorkerMetrics(CollectorRegistry()))
    result = GenerationResult(
        text="...", finish_reason="stop", model="m", latency_ms=812,
        usage=Usage(prompt_tokens=31, completion_tokens=200, total_tokens=231),
    )  # fmt: skip
    logger = logging.getLogger(TASK_LOGGER)
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        context = contextvars.copy_context()
        context.run(CURRENT_ENDPOINT.set, "default")
        context.run(observer.succeeded, "3f0c...", 1, result, 0.9305)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    [record] = handler.records
    return record


def test_task_log_line_examples_are_what_a_worker_writes() -> None:
    section = _section(DOCS / "operations.md", "## Task log lines")
    example = re.search(r"```json\n(.*?)\n```", section, re.S)
    text_line = re.search(r"`(task 3f0c\.\.\. succeeded [^`]+)`", section)
    assert example is not None and text_line is not None
    record = _logged_success()
    written = json.loads(JsonFormatter().format(record))
    documented = json.loads(example.group(1))
    assert list(written) == list(documented)
    assert {k: v for k, v in written.items() if k != "ts"} == {
        k: v for k, v in documented.items() if k != "ts"
    }
    assert record.getMessage() == text_line.group(1)
