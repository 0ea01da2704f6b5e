"""What genqueue takes from kombu, Celery and redis-py beyond their public API, and a check that
the installed releases still give it.

Some genqueue modules copy or override a method of kombu, Celery or redis-py
(worker.delivery.broker copies kombu's ``Channel._brpop_read``, writes the entries of its
``QoS.append``, and so on). Each keeps an ``UPSTREAM_COPIES`` table: the methods it copies or
overrides, with a digest of their source in the releases of :data:`TESTED`. :func:`changes`
compares those digests with the installed source; a worker logs what differs when it starts
(:func:`report`, worded by :func:`warning`), and
``tests/integration/delivery/test_kombu_internals.py`` fails on it, beside behavioural checks of
the Redis formats against a real Redis.
docs/development.md says how to upgrade (:data:`UPGRADE_PAGE`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import textwrap
from importlib import metadata
from typing import Any

#: The releases genqueue was tested with; pyproject.toml pins their minor versions.
TESTED = {"kombu": "5.7.0", "celery": "5.7.0", "redis": "8.2.0"}
#: What each distribution of :data:`TESTED` is called in words.
PROJECTS = {"kombu": "kombu", "celery": "Celery", "redis": "redis-py"}
#: Where upgrading them is explained.
UPGRADE_PAGE = "docs/development.md ('Upgrading kombu, Celery or redis-py')"
#: The modules with an ``UPSTREAM_COPIES`` table.
COPYING_MODULES = (
    "worker.delivery.broker",
    "worker.delivery.result_backend",
    "worker.tasks",
    "worker.redis_io.redis_sentinel",
)

log = logging.getLogger(__name__)


def installed() -> dict[str, str]:
    """The installed releases of the packages of :data:`TESTED`."""
    return {name: metadata.version(name) for name in TESTED}


def versions_line() -> str:
    """``kombu 5.7.0, celery 5.7.0, redis 8.2.0 installed (tested with ...)``."""
    now = ", ".join(f"{name} {version}" for name, version in installed().items())
    tested = ", ".join(f"{name} {version}" for name, version in TESTED.items())
    return f"{now} installed (genqueue was tested with {tested})"


def _resolve(name: str) -> Any:
    """``package.module:Class.attribute`` -> the object, or None if it is gone."""
    module_name, _, path = name.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in path.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found


def digest(name: str) -> str | None:
    """A digest of the source of ``name`` (``module:Class.method``); None if it is gone.

    Any change to the text counts, comments included: a copy is re-read, not guessed at.
    """
    found = _resolve(name)
    if found is None:
        return None
    source = textwrap.dedent(inspect.getsource(inspect.unwrap(found)))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def changes(copies: dict[str, str], copier: str) -> list[str]:
    """A sentence for each method of ``copies`` (name -> digest) whose installed source differs
    from the digest recorded by the module ``copier``."""
    found = []
    for name, recorded in copies.items():
        now = digest(name)
        if now is None:
            found.append(f"{name}, which {copier} relies on, is gone")
        elif now != recorded:
            found.append(
                f"{name}, which {copier} copies or overrides, has changed "
                f"(source digest {now}, recorded {recorded})"
            )
    return found


def all_changes() -> list[str]:
    """:func:`changes` of every module of :data:`COPYING_MODULES`."""
    found = []
    for module_name in COPYING_MODULES:
        module = importlib.import_module(module_name)
        found += changes(module.UPSTREAM_COPIES, module_name)
    return found


def _project_of(change: str) -> str:
    """The project whose method a sentence of :func:`changes` names (``redis.sentinel:...``)."""
    return PROJECTS[change.split(".", 1)[0].split(":", 1)[0]]


def warning(found: list[str]) -> str | None:
    """What a worker (and ``genqueue up``) says when ``found`` (:func:`all_changes`) is not
    empty: which project changed, what, the releases, and how to go back or upgrade."""
    if not found:
        return None
    projects = sorted({_project_of(change) for change in found})
    names = [name for name, words in PROJECTS.items() if words in projects]
    pins = " ".join(f"'{name}=={TESTED[name]}'" for name in names)
    return (
        f"{' and '.join(projects)} changed what genqueue relies on: {'; '.join(found)}. "
        f"{versions_line()}. Install the tested release (pip install {pins}), or see "
        f"{UPGRADE_PAGE} to upgrade"
    )


def report() -> list[str]:
    """Log, at a worker's start, whether the installed kombu, Celery and redis-py still hold what
    genqueue copies: a warning naming each change (the worker still starts), or an info line when
    the releases differ from :data:`TESTED` but nothing genqueue copies has changed."""
    found = all_changes()
    said = warning(found)
    if said is not None:
        log.warning("%s", said)
    elif installed() != TESTED:
        log.info("%s; what genqueue copies from them is unchanged", versions_line())
    return found
