"""The bench's phases: the drains (``drain``, ``overhead``, ``bare``), ``enqueue``, ``latency``."""
