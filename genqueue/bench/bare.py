"""Bare Celery, the baseline of ``genqueue bench``: the same endpoint call, nothing else.

A stock Celery app (JSON, Redis as broker and result backend, no other setting) with one task
that POSTs a completion with ``requests`` and returns the generated text. The benchmark runs it
as ``celery -A genqueue.bench.bare worker -P gevent -c 500``, one process. It reads
``REDIS_URL`` and ``RUNPOD_ENDPOINT_URL`` from the environment; genqueue never imports it.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from celery import Celery
from requests.adapters import HTTPAdapter

TASK_NAME = "bench_bare.complete"
#: Connections kept to the endpoint: one per greenlet of ``-c 500``.
POOL_SIZE = 500

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ENDPOINT_URL = os.environ.get("RUNPOD_ENDPOINT_URL", "http://127.0.0.1:5000").rstrip("/")

app = Celery("bench_bare", broker=REDIS_URL, backend=REDIS_URL)

# One session shared by the greenlets, its pool as large as the concurrency: what anyone
# calling an HTTP endpoint from 500 greenlets would write (a pool of 10 would reconnect).
_session = requests.Session()
_session.mount("http://", HTTPAdapter(pool_maxsize=POOL_SIZE))
_session.mount("https://", HTTPAdapter(pool_maxsize=POOL_SIZE))


@app.task(name=TASK_NAME)
def complete(prompt: str, params: dict[str, Any]) -> str:
    response = _session.post(
        f"{ENDPOINT_URL}/v1/completions", json={**params, "prompt": prompt}, timeout=(5, 95)
    )
    response.raise_for_status()
    return str(response.json()["choices"][0]["text"])
