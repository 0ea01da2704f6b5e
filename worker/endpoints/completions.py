"""The completions endpoint client: one POST to ``/v1/completions`` (or the chat route).

Knows nothing of Celery. Every failure it meets is classified by :mod:`worker.endpoints.classify`,
the one place that decides whether a failure is worth another attempt.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from worker.contract import GenerationResult, Usage
from worker.endpoints.answers import (
    DEFAULT_MAX_RESPONSE_BYTES,
    response_limit_bytes,
)
from worker.endpoints.classify import (
    classify_response,
    classify_transport_error,
    read_answer,
)
from worker.endpoints.disclosure import (
    EndpointVoice,
)
from worker.endpoints.streaming import PieceSink, is_event_stream, read_stream
from worker.errors import (
    InvalidEndpointResponse,
    PermanentEndpointError,
)
from worker.settings import default_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to call the endpoint. Built from the settings."""

    completions_url: str
    #: Where ``messages`` go as they are (chat mode): ``/v1/chat/completions``.
    chat_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    connect_timeout_s: float = default_of("endpoint_connect_timeout_s")
    read_timeout_s: float = default_of("endpoint_read_timeout_s")
    pool_size: int = 10
    #: The endpoint's configured name: the only way errors callers see speak of it.
    name: str = "default"
    #: The ceiling of an answer's size (``GENQUEUE_ENDPOINT_MAX_RESPONSE_BYTES``).
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    voice: EndpointVoice = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        voice = EndpointVoice.of(self.name, self.completions_url, self.api_key)
        object.__setattr__(self, "voice", voice)


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
        self,
        prompt: str,
        params: dict[str, Any],
        read_timeout_s: float | None = None,
        on_piece: PieceSink | None = None,
    ) -> GenerationResult:
        """POST one completion; raise a classified :class:`EndpointError` on any failure.

        ``read_timeout_s`` shortens the configured read timeout (a request's deadline). With
        ``on_piece``, the call streams (``stream: true``) and each piece of text goes to it as
        it arrives.
        """
        body: dict[str, Any] = {**params, "prompt": prompt}
        return self._post(self._config.completions_url, body, read_timeout_s, on_piece)

    def chat(
        self,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        read_timeout_s: float | None = None,
        on_piece: PieceSink | None = None,
    ) -> GenerationResult:
        """POST ``messages`` as they are to the chat route: the server applies its template."""
        url = self._config.chat_url
        if url is None:
            raise PermanentEndpointError("this endpoint has no chat route")
        body: dict[str, Any] = {**params, "messages": messages}
        return self._post(url, body, read_timeout_s, on_piece)

    def _post(
        self,
        url: str,
        body: dict[str, Any],
        read_timeout_s: float | None,
        on_piece: PieceSink | None = None,
    ) -> GenerationResult:
        if on_piece is not None:
            body["stream"] = True
            # The usage in the stream's last chunk (text-generation-webui 4.x, vLLM, OpenAI;
            # llama-cpp-python ignores it): without it the prompt is only estimated.
            body.setdefault("stream_options", {"include_usage": True})
        if self._config.model:
            body["model"] = self._config.model
        config = self._config
        read_s = config.read_timeout_s
        if read_timeout_s is not None:
            read_s = min(read_s, read_timeout_s)
        timeouts = (config.connect_timeout_s, read_s)
        limit = response_limit_bytes(body.get("max_tokens"), config.max_response_bytes)
        started = time.perf_counter()
        try:
            response = self._send(url, json.dumps(body).encode(), timeouts)
            deadline = time.monotonic() + read_s
            if on_piece is not None and is_event_stream(response):
                return read_stream(
                    response, limit, deadline, config.voice, on_piece, classify_response, started,
                    prompt_chars=_prompt_chars(body),
                )  # fmt: skip
            answer = read_answer(response, limit, deadline, config.voice)
        except requests.RequestException as err:
            # From None: the chained error's text (host, port, path) would reach Celery's
            # stored traceback; classify_transport_error logs it for the operator.
            raise classify_transport_error(err, config.voice, timeouts) from None
        latency_ms = int((time.perf_counter() - started) * 1000)
        result = parse_completion(answer, latency_ms, config.voice)
        if on_piece is not None:  # a server that answered the stream in one piece
            on_piece(result.text)
        return result

    def _send(self, url: str, data: bytes, timeouts: tuple[float, float]) -> requests.Response:
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self._urls[url]
        request.headers = CaseInsensitiveDict(self._headers)
        request.headers["Content-Length"] = str(len(data))
        request.body = data
        return self._adapter.send(
            request,
            stream=True,
            timeout=timeouts,
            verify=self._verify,
            proxies=self._session.proxies,
        )


def _prompt_chars(body: dict[str, Any]) -> int:
    """The characters of a request's prompt (or its messages' contents)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt)
    messages = body.get("messages") or []
    return sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))


def parse_completion(text: str, latency_ms: int, voice: EndpointVoice) -> GenerationResult:
    """The result from a 2xx body; :class:`InvalidEndpointResponse` if it is not one.

    The body is not quoted in the error: it may echo a prompt, or be anything at all.
    """
    try:
        completion = _Completion.model_validate_json(text)
    except ValidationError:
        reason = "not JSON" if _is_not_json(text) else "not a completion"
        log.warning("endpoint %s answered %d characters that are %s", voice.name, len(text), reason)
        raise InvalidEndpointResponse(
            voice.says(f" answered 200 but the body is {reason}")
        ) from None
    if not completion.choices:
        raise InvalidEndpointResponse(voice.says(" answered 200 with no choices"))
    choice = completion.choices[0]
    output = choice.message.content if choice.message is not None else choice.text
    if output is None:
        raise InvalidEndpointResponse(
            voice.says(" answered 200 but the body is not a completion: a choice has no text")
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
