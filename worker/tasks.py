"""The Celery task ``genqueue.generate``: as thin as a web view.

It hands the message to :class:`worker.generation.Generation` and maps the outcome onto
Celery: a result is returned, a :class:`RetryLater` becomes ``self.retry(countdown=...)`` (the
wait goes back to the queue and frees the slot), a cancellation is stored as REVOKED, a copy of
a task that runs elsewhere is dropped, and a final error is raised and stored.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from celery.exceptions import Ignore

from worker.contract import TASK_NAME
from worker.errors import GenQueueError, TaskCancelled
from worker.generation import DUPLICATE, RetryLater
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
    generation = runtime_for(self.app.genqueue_settings).generation
    try:
        outcome = generation.run(self.request.id, self.request.retries or 0, args, kwargs)
    except TaskCancelled as err:
        # Celery's own word for it, so plain Celery clients see REVOKED too.
        self.backend.mark_as_revoked(self.request.id, err.message, request=self.request)
        raise Ignore() from err
    if isinstance(outcome, RetryLater):
        raise self.retry(countdown=outcome.delay_s, exc=outcome.error, max_retries=None)
    if outcome == DUPLICATE:
        raise Ignore()
    return outcome
