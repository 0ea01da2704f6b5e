"""docs/reliability.md names the error types a caller may see: each is a class's in
worker/errors.py, and every class of it a caller may meet is named."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from worker import contract, errors

RELIABILITY = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"

#: Types of worker/errors.py no task status shows: bases, the configuration at start, a copy
#: of a task dropped, a pod control call (its task sees ``pod_unavailable``).
NEVER_SHOWN = {
    "internal_error", "settings_error", "endpoint_error", "already_running", "pod_control_error",
}  # fmt: skip


def _documented() -> list[str]:
    text = " ".join(RELIABILITY.read_text(encoding="utf-8").split())
    found = re.search(r"Error types a caller may see (.*?) Each is the `error_type`", text)
    assert found, "docs/reliability.md: the list of error types is gone"
    return re.findall(r"`([a-z_]+)`", found.group(1))


def _types_in_errors() -> set[str]:
    classes = inspect.getmembers(errors, inspect.isclass)
    return {cls.error_type for _, cls in classes if issubclass(cls, errors.GenQueueError)}


def test_the_documented_error_types_are_those_of_worker_errors() -> None:
    documented = [name for name in _documented() if name not in ("error", "last_error")]
    assert len(documented) == len(set(documented))
    assert set(documented) == _types_in_errors() - NEVER_SHOWN


def test_errors_repair_lone_surrogates_as_the_contract_does() -> None:
    assert errors._LONE_SURROGATE.pattern == contract._LONE_SURROGATE.pattern
    assert errors.InvalidRequest("a \udfff b").message == contract.replace_lone_surrogates(
        "a \udfff b"
    )
