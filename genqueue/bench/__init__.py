"""``genqueue bench``: genqueue side by side with bare Celery, on this machine.

Phases (``--only`` picks some, all run by default):

``drain``
    ``--tasks`` tasks are enqueued first (a backlog), then ``genqueue worker`` starts with its
    default settings against ``genqueue simulate --latency L``; the backlog is released to it
    once it is ready and the drain is timed until the last result.
``overhead``
    the same drain with a 0 ms simulator: genqueue's own cost per task.
``bare``
    the same drains with bare Celery (:mod:`genqueue.bench.bare`, one gevent process of 500).
``enqueue``
    ``POST /v1/tasks`` from ``--clients`` keep-alive connections against ``genqueue api``, and
    :class:`~api_producer.producers.direct.DirectProducer` (``submit`` and ``submit_many`` of 100).
``latency``
    submit to result visible, one task at a time, 0 ms simulator: genqueue, bare Celery and a
    direct call to the simulator.

Every figure is the median of ``--repeat`` repetitions with their min and max. The table goes
to stdout and, last, one JSON line with every figure; progress goes to stderr. BENCHMARKS.md
explains the method. Every process the bench starts runs in a process group of its own, is
told to stop if the bench dies, and is killed when its phase ends.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genqueue.bench.config import add_arguments
    from genqueue.bench.runner import run_bench

__all__ = ["add_arguments", "run_bench"]

# Loaded on first use: ``celery -A genqueue.bench.bare`` imports this package first, and the
# bare Celery baseline must load nothing of genqueue's (its memory and start-up are measured).
_LAZY = {"add_arguments": "genqueue.bench.config", "run_bench": "genqueue.bench.runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
