"""The completions endpoint client: one POST to ``/v1/completions``, every failure classified.

Knows nothing of Celery. :func:`classify_response` and :func:`classify_transport_error` are the
one place that decides whether a failure is worth another attempt.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import ProtocolError

from worker.backoff import parse_retry_after
from worker.contract import GenerationResult, Usage
from worker.errors import (
    ConnectionDropped,
    EndpointError,
    EndpointTimeout,
    EndpointUnreachable,
    InvalidEndpointResponse,
    PermanentEndpointError,
    RetryableEndpointError,
)

log = logging.getLogger(__name__)

#: Statuses another attempt may get past: timeouts, rate limits, overload, the pod proxy's 524.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 524})
#: How much of an endpoint's own error text an error message keeps.
ERROR_TEXT_MAX_CHARS = 300
#: A 500 whose body says this is the server refusing the request (llama.cpp's server answers
#: its request validation errors with a 500): another attempt would meet the same answer.
REQUEST_FAULT_TEXT = re.compile(r"validation error|invalid_request_error", re.IGNORECASE)


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to call the endpoint. Built from the settings."""

    completions_url: str
    #: The endpoint's configured name, for error messages.
    name: str = "default"
    #: Where ``messages`` go as they are (chat mode): ``/v1/chat/completions``.
    chat_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 95.0
    pool_size: int = 10


class _Message(BaseModel):
    content: str


class _Choice(BaseModel):
    text: str | None = None
    message: _Message | None = None
    finish_reason: str | None = None


class _Completion(BaseModel):
    choices: list[_Choice]
    model: str | None = None
    usage: Usage | None = None


def endpoint_session(url: str, pool_size: int) -> requests.Session:
    """A session for the endpoint at ``url``, its connection pool ``pool_size`` large.

    The proxy variables (``HTTPS_PROXY``, ``NO_PROXY``, ...) and CA bundle variables
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) are read once, here: requests would read and
    match them again on every request (5 % of a worker's CPU per task in the profile).
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.proxies = requests.utils.get_environ_proxies(url)
    ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca_bundle:
        session.verify = ca_bundle
    session.trust_env = False
    return session


class CompletionClient:
    """One ``requests.Session`` with a connection pool as large as the worker's concurrency.

    Requests go straight to the session's transport adapter (urllib3's pool, requests' errors):
    the session layer above it (cookies, redirects, hooks, merging settings) cost more CPU per
    call than the HTTP exchange itself in the profile, and genqueue uses none of it.
    """

    def __init__(self, config: EndpointConfig) -> None:
        self._config = config
        self._session = endpoint_session(config.completions_url, config.pool_size)
        self._session.headers["Content-Type"] = "application/json"
        if config.api_key:
            self._session.headers["Authorization"] = f"Bearer {config.api_key}"
        self._headers = {
            name: value if isinstance(value, str) else value.decode()
            for name, value in self._session.headers.items()
        }
        verify = self._session.verify
        self._verify: bool | str = True if verify is None else verify
        self._adapter = self._session.get_adapter(config.completions_url)
        self._urls = {
            url: requests.Request("POST", url).prepare().url
            for url in (config.completions_url, config.chat_url)
            if url is not None
        }

    def close(self) -> None:
        self._session.close()

    def complete(
        self, prompt: str, params: dict[str, Any], read_timeout_s: float | None = None
    ) -> GenerationResult:
        """POST one completion; raise a classified :class:`EndpointError` on any failure.

        ``read_timeout_s`` shortens the configured read timeout (a request's deadline).
        """
        body: dict[str, Any] = {**params, "prompt": prompt}
        return self._post(self._config.completions_url, body, read_timeout_s)

    def chat(
        self,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        read_timeout_s: float | None = None,
    ) -> GenerationResult:
        """POST ``messages`` as they are to the chat route: the server applies its template."""
        url = self._config.chat_url
        if url is None:
            raise PermanentEndpointError("this endpoint has no chat route")
        body: dict[str, Any] = {**params, "messages": messages}
        return self._post(url, body, read_timeout_s)

    def _post(
        self, url: str, body: dict[str, Any], read_timeout_s: float | None
    ) -> GenerationResult:
        if self._config.model:
            body["model"] = self._config.model
        read_s = self._config.read_timeout_s
        if read_timeout_s is not None:
            read_s = min(read_s, read_timeout_s)
        started = time.perf_counter()
        try:
            response = self._send(url, json.dumps(body).encode(), read_s)
        except requests.RequestException as err:
            raise classify_transport_error(err) from err
        latency_ms = int((time.perf_counter() - started) * 1000)
        error = classify_response(response.status_code, response.headers, response.text)
        if error is not None:
            if response.status_code == 404:
                raise _not_found(self._config.name, url, error)
            raise error
        return parse_completion(response.text, latency_ms)

    def _send(self, url: str, data: bytes, read_timeout_s: float) -> requests.Response:
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self._urls[url]
        request.headers = CaseInsensitiveDict(self._headers)
        request.headers["Content-Length"] = str(len(data))
        request.body = data
        return self._adapter.send(
            request,
            timeout=(self._config.connect_timeout_s, read_timeout_s),
            verify=self._verify,
            proxies=self._session.proxies,
        )


def _not_found(name: str, url: str, error: EndpointError) -> PermanentEndpointError:
    """A 404 names the path tried (never the host): a wrong base URL shows at once."""
    path = urlsplit(url).path
    detail = error.message.partition(": ")[2]
    message = f"endpoint {name!r} answered 404 for POST {path}"
    return PermanentEndpointError(f"{message}: {detail}" if detail else message, status_code=404)


def classify_transport_error(err: requests.RequestException) -> EndpointError:
    """Map a ``requests`` failure to a retryable or permanent error."""
    if isinstance(err, requests.Timeout):
        kind = "connect" if isinstance(err, requests.ConnectTimeout) else "read"
        log.debug("endpoint %s timeout: retryable", kind)
        return EndpointTimeout(f"endpoint {kind} timeout")
    if _dropped(err):
        log.debug("endpoint dropped the connection after the request: retryable")
        return ConnectionDropped(f"endpoint dropped the connection: {_transport_reason(err)}")
    if isinstance(err, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        log.debug("endpoint connection failed: retryable (%s)", type(err).__name__)
        return EndpointUnreachable(f"endpoint connection failed: {_transport_reason(err)}")
    log.debug("endpoint request failed: permanent (%s)", type(err).__name__)
    return PermanentEndpointError(f"endpoint request failed: {type(err).__name__}")


def _dropped(err: requests.RequestException) -> bool:
    """The connection was made and broke while the request was sent or answered."""
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return True
    reason = err.args[0] if err.args else None
    return isinstance(err, requests.ConnectionError) and isinstance(reason, ProtocolError)


def _transport_reason(err: requests.RequestException) -> str:
    # The text of a urllib3 error names the host and port, never headers: safe to keep.
    text = str(err.args[0]) if err.args else type(err).__name__
    return _truncate(text)


def classify_response(status: int, headers: Any, text: str) -> EndpointError | None:
    """``None`` for a 2xx; otherwise the error, keeping the endpoint's own words."""
    if 200 <= status < 300:
        return None
    detail = extract_error_text(text)
    message = f"endpoint answered {status}: {detail}" if detail else f"endpoint answered {status}"
    if status == 500 and REQUEST_FAULT_TEXT.search(text):
        log.debug("endpoint status 500 with a validation error: permanent")
        return PermanentEndpointError(message, status_code=status)
    if status in RETRYABLE_STATUSES:
        retry_after_s = _retry_after(headers)
        log.debug("endpoint status %d: retryable (retry-after %s)", status, retry_after_s)
        return RetryableEndpointError(message, status_code=status, retry_after_s=retry_after_s)
    if 300 <= status < 400:
        message = f"endpoint answered a redirect ({status}); genqueue does not follow redirects"
    log.debug("endpoint status %d: permanent", status)
    return PermanentEndpointError(message, status_code=status)


def _retry_after(headers: Any) -> float | None:
    millis = headers.get("retry-after-ms")
    if millis is not None:
        seconds = parse_retry_after(millis)
        if seconds is not None:
            return seconds / 1000
    return parse_retry_after(headers.get("retry-after"))


def extract_error_text(text: str) -> str:
    """The endpoint's own error words: OpenAI ``error.message``, FastAPI ``detail``, or text."""
    try:
        body = json.loads(text)
    except ValueError:
        return _truncate(text.strip())
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _truncate(error["message"])
        if isinstance(error, str):
            return _truncate(error)
        if "detail" in body:
            return _truncate(_describe_detail(body["detail"]))
    return _truncate(text.strip())


def _describe_detail(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg', '')}".strip(": "))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def parse_completion(text: str, latency_ms: int) -> GenerationResult:
    """The result from a 2xx body; :class:`InvalidEndpointResponse` if it is not one."""
    try:
        completion = _Completion.model_validate_json(text)
    except ValidationError as err:
        snippet = _truncate(text.strip(), 120)
        reason = "not JSON" if _is_not_json(text) else "not a completion"
        raise InvalidEndpointResponse(
            f"endpoint answered 200 but the body is {reason}: {snippet!r}"
        ) from err
    if not completion.choices:
        raise InvalidEndpointResponse("endpoint answered 200 with no choices")
    choice = completion.choices[0]
    output = choice.message.content if choice.message is not None else choice.text
    if output is None:
        raise InvalidEndpointResponse(
            "endpoint answered 200 but the body is not a completion: a choice has no text"
        )
    usage = completion.usage or Usage()
    return GenerationResult(
        text=output,
        finish_reason=choice.finish_reason,
        model=completion.model,
        usage=usage,
        latency_ms=latency_ms,
    )


def _is_not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def _truncate(text: str, limit: int = ERROR_TEXT_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = [
    "CompletionClient",
    "EndpointConfig",
    "RetryableEndpointError",
    "classify_response",
    "classify_transport_error",
    "extract_error_text",
    "parse_completion",
]
