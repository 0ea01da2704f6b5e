"""The bench's entry points: the scripts run as modules, the bare baseline loads nothing of ours."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code_or_module: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *code_or_module], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("module", "option"),
    [
        ("genqueue.bench.soak", "--kill-every"),
        ("genqueue.bench.batch_upload_rss", "--mib"),
        ("genqueue.bench.pods", "--idle-stop-s"),
    ],
)
def test_scripts_run_as_modules(module: str, option: str) -> None:
    done = _python(["-m", module, "--help"])
    assert done.returncode == 0, done.stderr
    assert option in done.stdout


def test_bare_celery_baseline_imports_nothing_of_genqueue() -> None:
    code = (
        "import sys, genqueue.bench.bare; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('genqueue', 'worker', 'api_producer')))"
    )
    done = _python(["-c", code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['genqueue', 'genqueue.bench', 'genqueue.bench.bare']"


def test_the_command_line_finds_the_bench_at_the_package_root() -> None:
    from genqueue.bench import add_arguments, run_bench
    from genqueue.bench.config import add_arguments as defined
    from genqueue.bench.runner import run_bench as runs

    assert (add_arguments, run_bench) == (defined, runs)
