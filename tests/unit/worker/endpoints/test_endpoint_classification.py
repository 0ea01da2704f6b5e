"""Table tests for worker.endpoints.completions: which failures are retryable, and what the message
keeps."""

from __future__ import annotations

import json
import socket

import pytest
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from worker.contract import GenerationResult, Usage
from worker.endpoints.classify import (
    ERROR_TEXT_MAX_CHARS,
    RETRYABLE_STATUSES,
    classify_response,
    classify_transport_error,
    extract_error_text,
)
from worker.endpoints.completions import parse_completion
from worker.endpoints.disclosure import EndpointVoice
from worker.errors import (
    ConnectionDropped,
    EndpointError,
    EndpointTimeout,
    EndpointUnreachable,
    InvalidEndpointResponse,
    PermanentEndpointError,
    RetryableEndpointError,
)


def headers(**values: str) -> CaseInsensitiveDict[str]:
    """Response headers as requests gives them (case-insensitive)."""
    return CaseInsensitiveDict({k.replace("_", "-"): v for k, v in values.items()})


NO_HEADERS = headers()
VOICE = EndpointVoice.of(
    "default", "https://pod-7f3a9c2e1b-5000.proxy.example/v2/ep7f3a9c2e1b/openai/v1", "sk-key-123"
)
TIMEOUTS = (5.0, 95.0)


# --- statuses --------------------------------------------------------------------------------


def test_retryable_statuses_are_exactly_these() -> None:
    assert frozenset({408, 425, 429, 500, 502, 503, 504, 524}) == RETRYABLE_STATUSES


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 524])
def test_retryable_statuses(status: int) -> None:
    error = classify_response(status, NO_HEADERS, "", VOICE)
    assert isinstance(error, RetryableEndpointError)
    assert not isinstance(error, PermanentEndpointError)
    assert type(error) is RetryableEndpointError
    assert error.status_code == status
    assert error.retry_after_s is None
    assert error.message == f"endpoint 'default' answered {status}"
    assert error.error_type == "endpoint_unavailable"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 422, 501, 505])
def test_permanent_statuses(status: int) -> None:
    error = classify_response(status, headers(Retry_After="5"), "", VOICE)
    assert isinstance(error, PermanentEndpointError)
    assert not isinstance(error, RetryableEndpointError)
    assert error.status_code == status
    assert error.retry_after_s is None
    assert error.message == f"endpoint 'default' answered {status}"
    assert error.error_type == "endpoint_rejected"


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_success_statuses(status: int) -> None:
    assert classify_response(status, NO_HEADERS, "anything", VOICE) is None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_permanent_and_not_followed(status: int) -> None:
    error = classify_response(status, headers(Location="https://elsewhere/"), "Moved", VOICE)
    assert isinstance(error, PermanentEndpointError)
    assert not isinstance(error, RetryableEndpointError)
    assert error.status_code == status
    assert error.message == (
        f"endpoint 'default' answered a redirect ({status}); genqueue does not follow redirects"
    )


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hdrs", "expected"),
    [
        (headers(Retry_After="2"), 2.0),
        (headers(**{"retry-after": "7"}), 7.0),
        (headers(RETRY_AFTER="0"), 0.0),
        (headers(Retry_After="1.5"), 1.5),
        (headers(Retry_After="Thu, 01 Jan 1970 00:00:00 GMT"), 0.0),
        (headers(Retry_After="soon"), None),
        (headers(Retry_After="-1"), None),
        (headers(retry_after_ms="1500"), 1.5),
        (headers(Retry_After_Ms="250"), 0.25),
        (headers(retry_after_ms="1500", Retry_After="9"), 1.5),  # ms wins
        (headers(retry_after_ms="bogus", Retry_After="9"), 9.0),  # bad ms -> Retry-After
        (headers(retry_after_ms="-5", Retry_After="9"), 9.0),
        (headers(retry_after_ms="nan"), None),
        (NO_HEADERS, None),
    ],
)
@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(
    status: int, hdrs: CaseInsensitiveDict[str], expected: float | None
) -> None:
    error = classify_response(status, hdrs, "", VOICE)
    assert isinstance(error, RetryableEndpointError)
    assert error.retry_after_s == expected


# --- the endpoint's own words ---------------------------------------------------------------

LONG = "x" * 299 + "END" + "y" * 100


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (
            429,
            json.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit"}}),
            "Rate limit reached",
        ),
        (
            400,
            json.dumps({"error": {"message": "prompt too long", "code": 400}}),
            "prompt too long",
        ),
        (500, json.dumps({"error": "engine crashed"}), "engine crashed"),
        (
            422,
            json.dumps(
                {
                    "detail": [
                        {
                            "loc": ["body", "max_tokens"],
                            "msg": "Input should be greater than 0",
                            "type": "greater_than",
                        },
                        {"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"},
                    ]
                }
            ),
            "body.max_tokens: Input should be greater than 0; body.prompt: Field required",
        ),
        (404, json.dumps({"detail": "Not Found"}), "Not Found"),
        (503, "  Service Unavailable\n", "Service Unavailable"),
        (500, "a" * ERROR_TEXT_MAX_CHARS, "a" * ERROR_TEXT_MAX_CHARS),
        (500, LONG, LONG[:300] + "..."),
        (500, json.dumps([1, 2]), "[1, 2]"),
    ],
    ids=[
        "openai-429",
        "openai-400",
        "error-string",
        "fastapi-422",
        "fastapi-detail-str",
        "plain-text",
        "exactly-300",
        "truncated",
        "json-list",
    ],
)
def test_message_keeps_the_endpoints_words(status: int, body: str, detail: str) -> None:
    error = classify_response(status, NO_HEADERS, body, VOICE)
    assert error is not None
    assert error.message == f"endpoint 'default' answered {status}: {detail}"
    assert str(error) == error.message


def test_long_openai_message_is_truncated() -> None:
    body = json.dumps({"error": {"message": "m" * 1000}})
    assert extract_error_text(body) == "m" * 300 + "..."


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", ""),
        ("   ", ""),
        ("short", "short"),
        ("x" * 301, "x" * 300 + "..."),
        ('{"error": {"message": 5}}', '{"error": {"message": 5}}'),
        ('{"detail": [{"msg": "bad"}]}', "bad"),
        ('{"detail": ["one", "two"]}', "one; two"),
    ],
)
def test_extract_error_text(body: str, expected: str) -> None:
    assert extract_error_text(body) == expected


# --- what callers read of an endpoint ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            json.dumps(
                {"error": {"message": "no model at https://pod-7f3a9c2e1b-5000.proxy.example/v1"}}
            ),
            "no model at https://[endpoint]/v1",
        ),
        (
            "bad key sk-key-123 for POD-7F3A9C2E1B-5000.PROXY.EXAMPLE",
            "bad key [redacted] for [endpoint]",
        ),
        ("endpoint ep7f3a9c2e1b is starting", "endpoint [endpoint] is starting"),
    ],
)
def test_the_endpoints_words_lose_its_address_and_key(body: str, detail: str) -> None:
    error = classify_response(503, NO_HEADERS, body, VOICE)
    assert error is not None
    assert error.message == f"endpoint 'default' answered 503: {detail}"


@pytest.mark.parametrize(
    "page", ["<html><body>Bad gateway</body></html>", "  <!DOCTYPE html><title>x</title>"]
)
def test_an_html_page_is_not_kept(page: str) -> None:
    error = classify_response(502, NO_HEADERS, page, VOICE)
    assert error is not None
    assert error.message == "endpoint 'default' answered 502 (an HTML page, not kept)"


# --- transport errors ------------------------------------------------------------------------

POOL_TEXT = (
    "HTTPSConnectionPool(host='pod-7f3a9c2e1b-5000.proxy.example', port=443): Max retries "
    "exceeded with url: /v1/completions"
)


def _wrapped(cause: BaseException) -> urllib3.exceptions.MaxRetryError:
    reason = urllib3.exceptions.NewConnectionError(None, f"{POOL_TEXT}: {cause}")  # type: ignore[arg-type]
    reason.__cause__ = cause
    return urllib3.exceptions.MaxRetryError(None, "/v1/completions", reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("err", "kind", "message"),
    [
        (requests.ConnectTimeout(POOL_TEXT), EndpointTimeout, "connect timed out after 5 s"),
        (requests.ReadTimeout(POOL_TEXT), EndpointTimeout, "read timed out after 95 s"),
        (requests.Timeout("timed out"), EndpointTimeout, "read timed out after 95 s"),
        (
            requests.ConnectionError(urllib3.exceptions.ReadTimeoutError(None, "/v1", "x")),  # type: ignore[arg-type]
            EndpointTimeout,
            "read timed out after 95 s",
        ),
        (
            requests.ConnectionError(_wrapped(ConnectionRefusedError(111, "Connection refused"))),
            EndpointUnreachable,
            "connection refused",
        ),
        (
            requests.ConnectionError(_wrapped(socket.gaierror(-2, "Name or service not known"))),
            EndpointUnreachable,
            "host name not resolved",
        ),
        (
            requests.ConnectionError(_wrapped(ConnectionResetError(104, "reset by peer"))),
            EndpointUnreachable,
            "connection reset",
        ),
        (
            requests.ConnectionError(
                urllib3.exceptions.ProtocolError("Connection aborted.", Exception("closed"))
            ),
            ConnectionDropped,
            "connection closed without an answer",
        ),
        (requests.exceptions.SSLError(POOL_TEXT), EndpointUnreachable, "TLS failed"),
        (requests.exceptions.ProxyError(POOL_TEXT), EndpointUnreachable, "proxy failed"),
        (requests.ConnectionError(POOL_TEXT), EndpointUnreachable, "connection failed"),
        (requests.ConnectionError(), EndpointUnreachable, "connection failed"),
        (
            requests.exceptions.ContentDecodingError(POOL_TEXT),
            InvalidEndpointResponse,
            "the body could not be decompressed",
        ),
        (
            requests.RequestException(POOL_TEXT),
            PermanentEndpointError,
            "request failed (RequestException)",
        ),
        (
            requests.exceptions.InvalidURL("bad url"),
            PermanentEndpointError,
            "request failed (InvalidURL)",
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_classify_transport_error(
    err: requests.RequestException,
    kind: type[EndpointError],
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = classify_transport_error(err, VOICE, TIMEOUTS)
    assert type(error) is kind
    assert error.status_code is None
    assert error.retry_after_s is None
    assert error.message == f"endpoint 'default': {message}"
    if kind in (PermanentEndpointError, InvalidEndpointResponse):
        assert not isinstance(error, RetryableEndpointError)
    else:
        assert isinstance(error, RetryableEndpointError)
    # The operator reads the rest in the log.
    if POOL_TEXT in str(err):
        assert POOL_TEXT in caplog.text


# --- parse_completion ------------------------------------------------------------------------

VALID = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1700000000,
    "model": "llama-3-8b",
    "choices": [
        {"index": 0, "text": " 4", "finish_reason": "stop", "logprobs": None},
        {"index": 1, "text": "ignored", "finish_reason": "length"},
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


def test_parse_completion_valid() -> None:
    result = parse_completion(json.dumps(VALID), 123, VOICE)
    assert result == GenerationResult(
        text=" 4",
        finish_reason="stop",
        model="llama-3-8b",
        usage=Usage(prompt_tokens=5, completion_tokens=1, total_tokens=6),
        latency_ms=123,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"choices": [{"text": "hi"}]},
            GenerationResult(
                text="hi", finish_reason=None, model=None, usage=Usage(), latency_ms=7
            ),
        ),
        (
            {"choices": [{"text": "", "finish_reason": "length"}], "model": "m", "usage": None},
            GenerationResult(
                text="", finish_reason="length", model="m", usage=Usage(), latency_ms=7
            ),
        ),
    ],
    ids=["minimal", "empty-text-null-usage"],
)
def test_parse_completion_minimal(body: dict[str, object], expected: GenerationResult) -> None:
    assert parse_completion(json.dumps(body), 7, VOICE) == expected


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("<html><body>502</body></html>", "not JSON"),
        ("", "not JSON"),
        ("{", "not JSON"),
        ('{"unexpected": true}', "not a completion"),
        ("[]", "not a completion"),
        ('"text"', "not a completion"),
        ('{"choices": [{"finish_reason": "stop"}]}', "not a completion"),
        ('{"choices": "nope"}', "not a completion"),
    ],
)
def test_parse_completion_rejects_bodies(body: str, reason: str) -> None:
    with pytest.raises(InvalidEndpointResponse) as info:
        parse_completion(body, 1, VOICE)
    assert info.value.message.startswith(
        f"endpoint 'default' answered 200 but the body is {reason}"
    )
    assert info.value.error_type == "invalid_response"
    assert isinstance(info.value, PermanentEndpointError)


def test_parse_completion_does_not_echo_the_body() -> None:
    body = json.dumps({"echo": "a prompt of someone else"})
    with pytest.raises(InvalidEndpointResponse) as info:
        parse_completion(body, 1, VOICE)
    assert "someone else" not in info.value.message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_parse_completion_no_choices() -> None:
    with pytest.raises(InvalidEndpointResponse) as info:
        parse_completion('{"choices": []}', 1, VOICE)
    assert info.value.message == "endpoint 'default' answered 200 with no choices"


def test_connection_broken_mid_body_is_retryable() -> None:
    protocol_error = urllib3.exceptions.ProtocolError(
        "Connection broken: IncompleteRead(13 bytes read, 487 more expected)"
    )
    chunked = requests.exceptions.ChunkedEncodingError(protocol_error)
    error = classify_transport_error(chunked, VOICE, TIMEOUTS)
    assert isinstance(error, EndpointUnreachable)
    assert error.message == "endpoint 'default': connection broken mid-answer"
