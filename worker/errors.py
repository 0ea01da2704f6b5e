"""genqueue's exceptions.

The tree::

    GenQueueError
    ├── SettingsError                  invalid configuration at start
    ├── InvalidRequest                 a payload that breaks the wire contract (permanent)
    ├── TemplateError                  unknown template or a rendering failure (permanent)
    ├── EndpointError                  the completions endpoint did not give a usable answer
    │   ├── RetryableEndpointError     worth another attempt later
    │   │   ├── EndpointTimeout
    │   │   ├── EndpointUnreachable    connection refused, reset, DNS
    │   │   │   └── ConnectionDropped  the connection broke after the request was sent
    │   │   ├── CircuitOpenError       the breaker holds calls back (no attempt spent)
    │   │   ├── RateLimitedError       the per-minute limit is spent (no attempt spent)
    │   │   ├── JobPending             a serverless job is still queued or running
    │   │   └── EmptyStream            a 200 stream closed without an event
    │   │                              worker/endpoints/streaming.py
    │   └── PermanentEndpointError     another attempt would get the same answer
    │       └── InvalidEndpointResponse  a 2xx whose body is not the expected JSON
    ├── AlreadyRunning                 another worker holds the task's running claim
    ├── RetriesExhausted               attempts or deadline spent on retryable errors
    │   └── PodUnavailable             an endpoint's pod did not come up within its bound
    ├── DeadlineExpired                the request's deadline passed before it could run
    ├── PoisonTask                     its worker died on every delivery; dead-lettered
    ├── TaskCancelled                  the task was cancelled
    ├── WebhookRefused                 a URL that may not receive webhooks (also a ValueError)
    │                                  worker/webhooks/url_check.py
    ├── EnqueueError                   a task could not be stored; nothing of it was left
    │                                  api_producer/producers/enqueue.py
    ├── IdempotencyConflict            an Idempotency-Key reused with another body (409)
    │   │                              api_producer/producers/enqueue.py
    │   └── IdempotencyInUse           its first request still enqueueing after a wait (409)
    ├── QuotaExceeded                  a submission would pass its tenant's tokens_per_day
    │                                  api_producer/quota.py
    ├── TooManyWaiters                 this API process holds its most ?wait= waits
    │                                  api_producer/waiters.py
    ├── BatchRefused                   a batch body refused whole (also a ValueError)
    │   ├── UnreadableBody         400 api_producer/batches/
    │   ├── UnsupportedMediaType   415
    │   └── BatchInvalid           422
    └── PodControlError                a RunPod control call (pod start, stop, state) failed
                                       worker/endpoints/pods/control.py

Outside the tree on purpose: ``worker.redis_io.redis_outage.RedisOutage`` (Redis away past the
budget: the task is abandoned to be sent again, never failed, so it must not be caught as a
``GenQueueError``), :class:`api_producer.client.GenQueueClientError`, the HTTP client's own
tree for callers of the API, and :class:`genqueue.errors.CommandError`, the errors the
``genqueue`` commands stop on (a port in use, a process that did not start, a benchmark that
cannot go on).

This module imports nothing of genqueue (as httpx's ``_exceptions``): any module may import it.

Each class carries a stable ``error_type``: the ``error.type`` callers see in a task status.
Messages never contain secrets: the endpoint client builds them from status codes and the
endpoint's own error text, never from request headers.
"""

from __future__ import annotations

import re

#: A lone surrogate (a JSON escape such as ``"\udfff"`` decodes to one): not UTF-8. The same
#: characters as :func:`worker.contract.replace_lone_surrogates`, kept here too so this module
#: imports nothing of genqueue.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class GenQueueError(Exception):
    """Base class of every error genqueue raises on purpose."""

    error_type = "internal_error"

    def __init__(self, message: str) -> None:
        # An endpoint's words may hold a lone surrogate (a JSON escape): it could not be
        # logged, stored or answered as UTF-8.
        message = _LONE_SURROGATE.sub("\ufffd", message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SettingsError(GenQueueError):
    """Raised when the configuration is invalid; the message names the variable."""

    error_type = "settings_error"


class InvalidRequest(GenQueueError):
    """Raised when a task payload does not match the wire contract."""

    error_type = "invalid_request"


class TemplateError(GenQueueError):
    """Raised for an unknown template name or a template that fails to render."""

    error_type = "template_error"


class EndpointError(GenQueueError):
    """Raised when the completions endpoint fails; carries what a retry decision needs."""

    error_type = "endpoint_error"

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s


class RetryableEndpointError(EndpointError):
    """Raised for failures that another attempt may not meet (429, 5xx, 524, transport)."""

    error_type = "endpoint_unavailable"


class EndpointTimeout(RetryableEndpointError):
    """Raised when the endpoint did not connect or answer within the configured timeouts."""

    error_type = "endpoint_timeout"


class EndpointUnreachable(RetryableEndpointError):
    """Raised when the connection to the endpoint failed or was reset."""

    error_type = "endpoint_unreachable"


class ConnectionDropped(EndpointUnreachable):
    """Raised when the connection broke after the request was sent (the server may have
    crashed on it: see :mod:`worker.pipeline.request_faults`)."""


class RateLimitedError(RetryableEndpointError):
    """Raised when the endpoint's shared per-minute limit is spent (no attempt spent)."""

    error_type = "rate_limited"


class JobPending(RetryableEndpointError):
    """Raised while a serverless job waits in RunPod's queue or runs (polled, no attempt)."""

    error_type = "job_pending"


class CircuitOpenError(RetryableEndpointError):
    """Raised when the endpoint's circuit breaker is open; the task waits without a call."""

    error_type = "circuit_open"


class AlreadyRunning(GenQueueError):
    """Raised when another worker holds the task's running claim: this delivery is a copy."""

    error_type = "already_running"

    def __init__(self, message: str = "another worker runs this task") -> None:
        super().__init__(message)


class PermanentEndpointError(EndpointError):
    """Raised when the endpoint refused the request (400, 401, 403, 404, 422, ...)."""

    error_type = "endpoint_rejected"


class InvalidEndpointResponse(PermanentEndpointError):
    """Raised when a 2xx answer is not the completions JSON genqueue expects."""

    error_type = "invalid_response"


class RetriesExhausted(GenQueueError):
    """Raised when the attempts or the overall deadline ran out on retryable errors."""

    error_type = "retries_exhausted"


class PodUnavailable(RetriesExhausted):
    """Raised when an endpoint's pod did not come up (running, its model loaded) within its
    bound: the task falls back, or fails saying so."""

    error_type = "pod_unavailable"


class PodControlError(GenQueueError):
    """Raised when a call to RunPod's control API failed; the message names the pod and the
    status, never the account key."""

    error_type = "pod_control_error"


class DeadlineExpired(GenQueueError):
    """Raised when a request's deadline passed before it was served."""

    error_type = "expired"


class PoisonTask(GenQueueError):
    """Raised when a message was delivered ``max_deliveries`` times and never finished."""

    error_type = "poison"


class TaskCancelled(GenQueueError):
    """Raised when a task was cancelled before or while it ran."""

    error_type = "cancelled"
