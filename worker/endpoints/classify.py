"""Every failure of an endpoint call classified once: retryable or permanent, in words a caller
may read.

:func:`classify_response` (a status and its body) and :func:`classify_transport_error` (a
connection that failed or broke) are the one place that decides whether a failure is worth
another attempt; :mod:`worker.pipeline.retry_decision` then decides when, or whether to give up.
The words name the endpoint and keep its own error text, without its address or key
(:mod:`worker.endpoints.disclosure`).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import requests
from urllib3.exceptions import ProtocolError

from worker.endpoints.answers import ERROR_BODY_MAX_BYTES, read_body
from worker.endpoints.disclosure import (
    EndpointVoice,
    connection_failure,
    is_read_timeout,
    looks_like_html,
)
from worker.errors import (
    ConnectionDropped,
    EndpointError,
    EndpointTimeout,
    EndpointUnreachable,
    InvalidEndpointResponse,
    PermanentEndpointError,
    RetryableEndpointError,
)
from worker.pipeline.backoff import parse_retry_after

log = logging.getLogger(__name__)

#: Statuses another attempt may get past: timeouts, rate limits, overload, the pod proxy's 524.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 524})
#: How much of an endpoint's own error text an error message keeps.
ERROR_TEXT_MAX_CHARS = 300
#: A 500 whose body says this is the server refusing the request (llama.cpp's server answers
#: its request validation errors with a 500): another attempt would meet the same answer.
REQUEST_FAULT_TEXT = re.compile(r"validation error|invalid_request_error", re.IGNORECASE)


def read_answer(
    response: requests.Response, limit_bytes: int, deadline: float, voice: EndpointVoice
) -> str:
    """A 2xx answer's text, read up to ``limit_bytes``; a classified error for anything else.

    :raises EndpointError: for a non-2xx status or a 2xx body over ``limit_bytes``.
    :raises requests.RequestException: when the body could not be read.
    """
    if not 200 <= response.status_code < 300:
        body = read_body(response, ERROR_BODY_MAX_BYTES, deadline)
        error = classify_response(
            response.status_code, response.headers, body.text(response.encoding), voice
        )
        assert error is not None
        if response.status_code == 404:
            raise not_found(voice, response.url, error)
        raise error
    answer = read_body(response, limit_bytes, deadline)
    if not answer.complete:
        raise InvalidEndpointResponse(too_large(voice, response.status_code, limit_bytes))
    return answer.text()


def not_found(voice: EndpointVoice, url: str, error: EndpointError) -> PermanentEndpointError:
    """A 404 names the path tried (ids in it masked, never the host): a wrong base URL shows."""
    detail = error.message.partition(": ")[2]
    message = voice.says(f" answered 404 for POST {voice.route(url)}")
    return PermanentEndpointError(f"{message}: {detail}" if detail else message, status_code=404)


def too_large(voice: EndpointVoice, status: int, limit_bytes: int) -> str:
    """The error of an answer over its cap."""
    return voice.says(
        f" answered {status} with a body over {limit_bytes} bytes, the most genqueue reads "
        "for this request (GENQUEUE_ENDPOINT_MAX_RESPONSE_BYTES and max_tokens set it)"
    )


def classify_transport_error(
    err: requests.RequestException, voice: EndpointVoice, timeouts: tuple[float, float]
) -> EndpointError:
    """Map a ``requests`` failure to a retryable or permanent error.

    The message names the endpoint and the class of failure; the failure's own text (host,
    port, path) is logged for the operator, never stored for callers.
    """
    connect_s, read_s = timeouts
    log.warning("endpoint %s call failed: %s: %s", voice.name, type(err).__name__, err)
    if isinstance(err, requests.ConnectTimeout):
        return EndpointTimeout(voice.says(f": connect timed out after {connect_s:g} s"))
    if isinstance(err, requests.Timeout) or is_read_timeout(err):
        return EndpointTimeout(voice.says(f": read timed out after {read_s:g} s"))
    if isinstance(err, requests.exceptions.ContentDecodingError):
        return InvalidEndpointResponse(voice.says(": the body could not be decompressed"))
    if _dropped(err):
        return ConnectionDropped(voice.says(f": {connection_failure(err)}"))
    if isinstance(err, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return EndpointUnreachable(voice.says(f": {connection_failure(err)}"))
    return PermanentEndpointError(voice.says(f": request failed ({type(err).__name__})"))


def _dropped(err: requests.RequestException) -> bool:
    """The connection was made and broke while the request was sent or answered."""
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return True
    reason = err.args[0] if err.args else None
    return isinstance(err, requests.ConnectionError) and isinstance(reason, ProtocolError)


def classify_response(
    status: int, headers: Any, text: str, voice: EndpointVoice
) -> EndpointError | None:
    """``None`` for a 2xx; otherwise the error, keeping the endpoint's own words.

    Its words lose the endpoint's address and key; an HTML page is not kept at all.
    """
    if 200 <= status < 300:
        return None
    if looks_like_html(text):
        message = voice.says(f" answered {status} (an HTML page, not kept)")
    else:
        detail = voice.scrub(extract_error_text(text))
        message = voice.says(f" answered {status}: {detail}" if detail else f" answered {status}")
    if status == 500 and REQUEST_FAULT_TEXT.search(text):
        log.debug("endpoint status 500 with a validation error: permanent")
        return PermanentEndpointError(message, status_code=status)
    if status in RETRYABLE_STATUSES:
        retry_after_s = _retry_after(headers)
        log.debug("endpoint status %d: retryable (retry-after %s)", status, retry_after_s)
        return RetryableEndpointError(message, status_code=status, retry_after_s=retry_after_s)
    if 300 <= status < 400:
        message = voice.says(f" answered a redirect ({status}); genqueue does not follow redirects")
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


def _truncate(text: str, limit: int = ERROR_TEXT_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
