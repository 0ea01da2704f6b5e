"""The Celery task ``genqueue.generate``: as thin as a web view.

It hands the message to :class:`worker.generation.Generation` and maps the outcome onto
Celery: a result is returned, a :class:`RetryLater` becomes ``self.retry(countdown=...)`` (the
wait goes back to the queue and frees the slot), a final error is raised and stored.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from worker.contract import TASK_NAME
from worker.errors import GenQueueError
from worker.generation import RetryLater
from worker.runtime import runtime_for


@shared_task(
    name=TASK_NAME,
    bind=True,
    typing=False,
    acks_late=True,
    max_retries=None,
    throws=(GenQueueError,),
)
def generate(self: Task, *args: Any, **kwargs: Any) -> Any:
    outcome = runtime_for(self.app.genqueue_settings).generation.run(self.request.id, args, kwargs)
    if isinstance(outcome, RetryLater):
        raise self.retry(countdown=outcome.delay_s, exc=outcome.error, max_retries=None)
    return outcome
