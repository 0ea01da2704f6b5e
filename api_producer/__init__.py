"""genqueue's producer side: the HTTP API, the Python client and the direct producer."""

from api_producer.client import (
    GenQueueClient,
    GenQueueClientError,
    TaskFailed,
    TaskNotFound,
    Unauthorized,
)

__all__ = ["GenQueueClient", "GenQueueClientError", "TaskFailed", "TaskNotFound", "Unauthorized"]
