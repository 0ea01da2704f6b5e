"""``GenQueueClient``: the HTTP API from Python, with typed errors.

    client = GenQueueClient("http://127.0.0.1:8000", api_key="...")
    task_id = client.submit({"prompt": "How can I make a cake?", "params": {"max_tokens": 200}})
    status = client.wait(task_id, timeout_s=120)
    print(status.result.text)

The error tree::

    GenQueueClientError
    ├── Unauthorized        401
    ├── TaskNotFound        404
    ├── Conflict            409 (an Idempotency-Key reused with another body)
    ├── RequestRejected     413, 422
    ├── RateLimited         429 (carries ``retry_after_s``)
    ├── ServiceUnavailable  503, connection failures
    ├── WaitTimeout         the task did not finish within the wait
    └── TaskFailed          the task ended failed or cancelled (carries the status)
"""

from __future__ import annotations

import json as json_module
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import requests

from api_producer.client_stream import Restart, StreamExpired, StreamItem, stream_items
from worker.contract import GenerationRequest, TaskStatus

__all__ = ["GenQueueClient", "Restart", "StreamItem"]

#: The longest single ``?wait=`` the client asks of the server.
WAIT_CHUNK_S = 30.0
#: The longest silence of a task's event stream before the client gives it up.
STREAM_READ_TIMEOUT_S = 30.0


class GenQueueClientError(Exception):
    """Raised for any failed API call; ``status_code`` is the HTTP status when there is one."""

    def __init__(self, message: str, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        #: The API's ``detail``: a message, or for a 422 the list of ``{type, loc, msg}``.
        self.detail = detail


class Unauthorized(GenQueueClientError):
    """Raised when the API refused the key (401)."""


class TaskNotFound(GenQueueClientError):
    """Raised for a task id the API does not know (404)."""


class Conflict(GenQueueClientError):
    """Raised when an Idempotency-Key was used before with a different body (409)."""


class RequestRejected(GenQueueClientError):
    """Raised for an invalid or too large request (413, 422)."""


class RateLimited(GenQueueClientError):
    """Raised for 429: over a rate limit, or the API holds as many waits as it may.

    ``retry_after_s`` is the server's ``Retry-After`` (1 s when it sent none).
    """

    def __init__(self, message: str, status_code: int | None = 429, retry_after_s: float = 1.0):
        super().__init__(message, status_code)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(GenQueueClientError):
    """Raised when the API or its Redis cannot be reached (503, connection errors)."""


class WaitTimeout(GenQueueClientError):
    """Raised when a task is not final within the time :meth:`GenQueueClient.wait` was given."""


class TaskFailed(GenQueueClientError):
    """Raised by :meth:`GenQueueClient.wait` when the task failed or was cancelled."""

    def __init__(self, status: TaskStatus) -> None:
        error = status.error
        message = f"{error.type}: {error.message}" if error else status.status.value
        super().__init__(f"task {status.task_id} {status.status.value}: {message}")
        self.status = status


#: Where in a request FastAPI's ``loc`` starts (left out of the words).
_LOCATIONS = frozenset({"body", "query", "path", "header"})

_ERRORS: Mapping[int, type[GenQueueClientError]] = {
    401: Unauthorized,
    404: TaskNotFound,
    409: Conflict,
    413: RequestRejected,
    422: RequestRejected,
    429: RateLimited,
    503: ServiceUnavailable,
}

RequestLike = GenerationRequest | Mapping[str, Any]


class GenQueueClient:
    """A client of genqueue's HTTP API.

    :param base_url: e.g. ``http://127.0.0.1:8000``.
    :param api_key: one of the API's ``GENQUEUE_API_KEYS``; ``None`` when it has none.
    :param timeout_s: connect and read timeout of each call (a wait adds its own time).
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._session = requests.Session()
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> GenQueueClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, request: RequestLike, idempotency_key: str | None = None) -> str:
        """Enqueue one request; its task id."""
        body = _as_body(request)
        answer = self._call("POST", "/v1/tasks", json=body, idempotency_key=idempotency_key)
        return str(answer["task_id"])

    def submit_batch(
        self, requests_: Sequence[RequestLike], idempotency_key: str | None = None
    ) -> list[str]:
        """Enqueue all of ``requests_`` or none; their task ids in order."""
        body = {"requests": [_as_body(r) for r in requests_]}
        answer = self._call("POST", "/v1/tasks/batch", json=body, idempotency_key=idempotency_key)
        return [str(task["task_id"]) for task in answer["tasks"]]

    def get(self, task_id: str, wait_s: float = 0.0) -> TaskStatus:
        """The task's status; the server holds the call up to ``wait_s`` for a final one."""
        params = {"wait": wait_s} if wait_s > 0 else None
        answer = self._call("GET", f"/v1/tasks/{task_id}", params=params, extra_timeout_s=wait_s)
        return TaskStatus.model_validate(answer)

    def wait(self, task_id: str, timeout_s: float = 300.0) -> TaskStatus:
        """The final status; :class:`TaskFailed` if it failed or was cancelled.

        A wait the API refuses for now (429: it holds as many as it may) is asked again after
        its ``Retry-After``, within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                status = self.get(task_id, wait_s=max(0.0, min(WAIT_CHUNK_S, remaining)))
            except RateLimited as busy:
                if remaining <= 0:
                    raise WaitTimeout(f"task {task_id}: the API refused to wait ({busy})") from busy
                time.sleep(min(busy.retry_after_s, remaining))
                continue
            if status.status.is_final:
                if status.status.value != "succeeded":
                    raise TaskFailed(status)
                return status
            if remaining <= 0:
                raise WaitTimeout(f"task {task_id} is still {status.status.value}")

    def stream(self, task_id: str, last_event_id: str | None = None) -> Iterator[StreamItem]:
        """The task's text as it comes: ``str`` pieces, a :class:`Restart` when a broken call
        is retried (discard the text so far), and last its final :class:`TaskStatus`.

        A task still queued is waited for; one that does not stream gives its whole text as
        one piece. ``last_event_id`` resumes after that event.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            response = self._session.get(
                f"{self._base}/v1/tasks/{task_id}/stream",
                headers=headers,
                stream=True,
                # Keep-alive comments come every 15 s: a read twice that long is a dead line.
                timeout=(self._timeout_s, max(self._timeout_s, STREAM_READ_TIMEOUT_S)),
            )
        except requests.RequestException as err:
            raise ServiceUnavailable(f"genqueue API unreachable: {type(err).__name__}") from err
        with response:
            if response.status_code >= 400:
                raise _error_for(response)
            try:
                yield from stream_items(response)
            except StreamExpired as err:
                raise TaskNotFound(str(err), 404) from err
            except requests.RequestException as err:
                raise ServiceUnavailable(f"stream cut short: {type(err).__name__}") from err

    def cancel(self, task_id: str) -> TaskStatus:
        """Cancel a task; its status after the request."""
        return TaskStatus.model_validate(self._call("DELETE", f"/v1/tasks/{task_id}"))

    def create_batch(
        self, batch: bytes | Sequence[RequestLike], timeout_s: float = 600.0
    ) -> dict[str, Any]:
        """Upload a batch: JSONL bytes as they are, or requests each with a ``custom_id``.

        The answer is ``{"batch_id", "status", "total"}``. All lines are enqueued or none
        (:class:`RequestRejected` names the bad lines). ``timeout_s`` is the read timeout:
        enqueueing tens of thousands of tasks takes a while.
        """
        if isinstance(batch, bytes):
            data, content_type = batch, "application/x-ndjson"
        else:
            body = {"requests": [_as_body(r) for r in batch]}
            data, content_type = json_module.dumps(body).encode(), "application/json"
        response = self._raw(
            "POST", "/v1/batches", data=data, content_type=content_type, read_timeout_s=timeout_s
        )
        return dict(response.json())

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """``{"batch_id", "status", "total", "counts", "created_at"}``; 404 is TaskNotFound."""
        return dict(self._call("GET", f"/v1/batches/{batch_id}"))

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel the batch's unfinished tasks; its status after the request."""
        return dict(self._call("DELETE", f"/v1/batches/{batch_id}"))

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Each request's outcome in input order: custom_id, task_id, status, result, error.

        Streamed; raises :class:`ServiceUnavailable` if the answer was cut short.
        """
        response = self._raw("GET", f"/v1/batches/{batch_id}/results", stream=True)
        with response:
            expected = int(response.headers.get("X-Batch-Total", "-1"))
            count = 0
            try:
                for line in response.iter_lines():
                    if line:
                        count += 1
                        yield json_module.loads(line)
            except requests.RequestException as err:
                raise ServiceUnavailable(f"batch results cut short: {err}") from err
        if expected >= 0 and count != expected:
            raise ServiceUnavailable(f"batch results cut short: {count} of {expected} lines")

    def usage(
        self, first: str | None = None, last: str | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """``GET /v1/usage``: ``{"from", "to", "usage": [rows]}`` for UTC days (YYYY-MM-DD)."""
        params = {"from": first, "to": last, "tenant": tenant}
        found = self._call("GET", "/v1/usage", params={k: v for k, v in params.items() if v})
        return dict(found)

    def _raw(
        self,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        content_type: str | None = None,
        stream: bool = False,
        read_timeout_s: float | None = None,
    ) -> requests.Response:
        headers = {"Content-Type": content_type} if content_type else None
        try:
            response = self._session.request(
                method,
                self._base + path,
                data=data,
                headers=headers,
                stream=stream,
                timeout=(self._timeout_s, read_timeout_s or self._timeout_s),
            )
        except requests.RequestException as err:
            raise ServiceUnavailable(f"genqueue API unreachable: {type(err).__name__}") from err
        if response.status_code >= 400:
            with response:
                raise _error_for(response)
        return response

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        idempotency_key: str | None = None,
        extra_timeout_s: float = 0.0,
    ) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        try:
            response = self._session.request(
                method,
                self._base + path,
                json=json,
                params=params,
                headers=headers,
                timeout=(self._timeout_s, self._timeout_s + extra_timeout_s),
            )
        except requests.RequestException as err:
            raise ServiceUnavailable(f"genqueue API unreachable: {type(err).__name__}") from err
        if response.status_code >= 400:
            raise _error_for(response)
        return response.json()


def _as_body(request: RequestLike) -> dict[str, Any]:
    if isinstance(request, GenerationRequest):
        return request.model_dump(mode="json", exclude_none=True)
    return dict(request)


def _error_for(response: requests.Response) -> GenQueueClientError:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text[:300]
    message = f"{response.status_code}: {in_words(detail)}"
    if response.status_code == 429:
        error = RateLimited(message, retry_after_s=_retry_after_s(response))
        error.detail = detail
        return error
    error_class = _ERRORS.get(response.status_code, GenQueueClientError)
    return error_class(message, status_code=response.status_code, detail=detail)


def field_path(loc: Sequence[Any]) -> str:
    """``("body", "params", "max_tokens")`` as ``params.max_tokens`` (``requests[2]`` for an
    index); where in the request (body, query) is left out."""
    parts = list(loc[1:] if loc and loc[0] in _LOCATIONS else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def in_words(detail: Any) -> str:
    """An error's ``detail`` as a sentence: FastAPI's list of problems as ``where: what; ...``."""
    if not isinstance(detail, list):
        return str(detail)
    said = []
    for problem in detail:
        if not isinstance(problem, Mapping):
            said.append(str(problem))
            continue
        where = field_path(problem.get("loc") or ())
        what = str(problem.get("msg", "invalid"))
        said.append(f"{where}: {what}" if where else what)
    return "; ".join(said) or "invalid request"


def _retry_after_s(response: requests.Response) -> float:
    """``Retry-After`` in seconds, bounded to [0.1, 60]; 1 s when absent or not a number."""
    try:
        value = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0
    return min(max(value, 0.1), 60.0) if value == value else 1.0
