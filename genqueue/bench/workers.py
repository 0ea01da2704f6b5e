"""The two workers compared: ``genqueue worker`` and bare Celery, how each starts and is fed."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery

from genqueue.bench.processes import base_env
from genqueue.cli.worker import process_count
from worker.contract import CELERY_DEFAULT_QUEUE, QUEUE_NAME, GenerationRequest
from worker.pipeline.render import PromptRenderer
from worker.settings import Settings

#: What every benchmark task asks for.
REQUEST: dict[str, Any] = {
    "prompt": "How can I make a cake?",
    "system": "You are Dolphin, a helpful AI assistant.",
    "params": {"max_tokens": 16, "seed": 10},
}
#: genqueue/bench/bare.py's task and concurrency (not imported: it builds a Celery app).
BARE_TASK = "bench_bare.complete"
BARE_CONCURRENCY = 500
BATCH = 100
#: RUNPOD_MAX_CONCURRENCY for the benchmark: high enough never to be the bottleneck.
UNCAPPED = "100000"


class GenqueueKind:
    """``genqueue worker`` with its defaults, fed by the direct producer."""

    name = "genqueue"
    queue = QUEUE_NAME

    def __init__(self, settings: Settings) -> None:
        defaults = Settings.model_construct()  # the defaults, not this process's environment
        self.processes = process_count(defaults)
        self.cap = self.processes * defaults.worker_concurrency
        self._settings = settings
        self._request = GenerationRequest.model_validate(REQUEST)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "genqueue", "worker"]

    def env(self, endpoint_url: str) -> dict[str, str]:
        return base_env() | {
            "REDIS_URL": self._settings.redis_url,
            "RUNPOD_ENDPOINT_URL": endpoint_url,
            "RUNPOD_MAX_CONCURRENCY": UNCAPPED,
        }

    def enqueue(self, count: int) -> list[str]:
        from api_producer.producers.direct import DirectProducer

        producer = DirectProducer(self._settings)
        task_ids: list[str] = []
        try:
            while len(task_ids) < count:
                batch = [self._request] * min(BATCH, count - len(task_ids))
                task_ids += producer.submit_many(batch).task_ids
        finally:
            producer.close()
        return task_ids

    @contextlib.contextmanager
    def submitter(self) -> Iterator[Callable[[], str]]:
        from api_producer.producers.direct import DirectProducer

        producer = DirectProducer(self._settings)
        try:
            yield lambda: producer.submit(self._request)
        finally:
            producer.close()


class BareKind:
    """``celery -A genqueue.bench.bare worker -P gevent -c 500``, fed by plain ``send_task``."""

    name = "bare"
    queue = CELERY_DEFAULT_QUEUE
    processes = 1
    cap = BARE_CONCURRENCY

    def __init__(self, settings: Settings) -> None:
        self._url = settings.redis_url
        request = GenerationRequest.model_validate(REQUEST)
        prompt = PromptRenderer(None).render(request)
        params = request.params.model_dump(mode="json", exclude_none=True)
        self._kwargs: dict[str, Any] = {"prompt": prompt, "params": params}
        #: The bare task's keyword arguments.
        self.task_kwargs = self._kwargs
        #: What the bare task POSTs (and what the direct call of the latency phase sends).
        self.completion_body: dict[str, Any] = {**params, "prompt": prompt}

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "genqueue.bench.bare", "worker",
            "-P", "gevent", "-c", str(self.cap),
        ]  # fmt: skip

    def env(self, endpoint_url: str) -> dict[str, str]:
        return base_env() | {"REDIS_URL": self._url, "RUNPOD_ENDPOINT_URL": endpoint_url}

    @contextlib.contextmanager
    def submitter(self) -> Iterator[Callable[[], str]]:
        app = Celery("genqueue-bench-client", broker=self._url, set_as_current=False)
        try:
            yield lambda: str(app.send_task(BARE_TASK, kwargs=self._kwargs).id)
        finally:
            app.close()

    def enqueue(self, count: int) -> list[str]:
        with self.submitter() as submit:
            return [submit() for _ in range(count)]


Kind = GenqueueKind | BareKind
