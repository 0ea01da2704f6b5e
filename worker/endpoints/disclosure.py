"""What an error stored for callers may say about an endpoint.

Any API key may read any task's error, so a stored message names the endpoint by its configured
name and says what class of failure it met ("connection refused", "read timed out after 95 s",
"answered 500: <the endpoint's own words>"). It never carries the endpoint's host, port, path or
key: transport errors are described by their class only (their full text, which names host,
port and path, goes to the worker log), and the endpoint's own words lose its address and key
and are dropped when they are an HTML page (a proxy's error page names hosts and addresses).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3

#: Stands in for the endpoint's address (host, port, the ids in its path) in its own words.
ADDRESS_MARK = "[endpoint]"
#: Stands in for its key.
KEY_MARK = "[redacted]"
#: A path segment this long with a digit in it is taken for an id (a RunPod endpoint or pod id).
_ID_MIN_CHARS = 6


@dataclass(frozen=True)
class EndpointVoice:
    """How errors speak of one endpoint: its name, and what its own words must not pass on."""

    name: str
    #: Strings replaced by :data:`ADDRESS_MARK` (longest first).
    address: tuple[str, ...] = ()
    key: str | None = None

    @classmethod
    def of(cls, name: str, url: str | None = None, key: str | None = None) -> EndpointVoice:
        """The voice of endpoint ``name`` at ``url``, called with ``key``."""
        return cls(name, _address_words(url) if url else (), key or None)

    def says(self, what: str) -> str:
        """``endpoint 'NAME'`` followed by ``what`` (which starts with ``:`` or a space)."""
        return f"endpoint {self.name!r}{what}"

    def route(self, url: str) -> str:
        """The path of ``url`` with the segments that look like ids masked (no host, no query)."""
        segments = urlsplit(url).path.split("/")
        return "/".join(ADDRESS_MARK if _looks_like_id(s) else s for s in segments)

    def scrub(self, words: str) -> str:
        """The endpoint's own ``words`` without its key or address."""
        if self.key:
            words = words.replace(self.key, KEY_MARK)
        for word in self.address:
            words = re.sub(re.escape(word), ADDRESS_MARK, words, flags=re.IGNORECASE)
        return words


def _address_words(url: str) -> tuple[str, ...]:
    parts = urlsplit(url)
    words = {parts.netloc, parts.hostname or ""}
    # The routes genqueue adds are no secret: the base's path is.
    path = parts.path.rstrip("/").removesuffix("/completions").removesuffix("/chat")
    path = path.removesuffix("/v1")
    if path:
        words.add(path)
    words.update(segment for segment in path.split("/") if _looks_like_id(segment))
    return tuple(sorted((w for w in words if w), key=len, reverse=True))


def _looks_like_id(segment: str) -> bool:
    return len(segment) >= _ID_MIN_CHARS and any(c.isdigit() for c in segment)


def looks_like_html(text: str) -> bool:
    """Whether an error body is a page (a proxy's or a server's), not an API's words."""
    return text.lstrip()[:1] == "<"


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and everything it wraps: ``args``, urllib3's ``reason``, causes and contexts."""
    pending: list[BaseException] = [err]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = (getattr(current, "reason", None), current.__cause__, current.__context__)
        pending.extend(e for e in (*wrapped, *current.args) if isinstance(e, BaseException))


#: The class of a failed connection, by the first of these found among its causes.
_CONNECTION_CLASSES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((ConnectionRefusedError,), "connection refused"),
    ((socket.gaierror, urllib3.exceptions.NameResolutionError), "host name not resolved"),
    ((ssl.SSLError, urllib3.exceptions.SSLError, requests.exceptions.SSLError), "TLS failed"),
    ((urllib3.exceptions.ProxyError, requests.exceptions.ProxyError), "proxy failed"),
    (
        (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.IncompleteRead),
        "connection broken mid-answer",
    ),
    ((ConnectionResetError, ConnectionAbortedError), "connection reset"),
    ((urllib3.exceptions.ProtocolError,), "connection closed without an answer"),
)


def connection_failure(err: BaseException) -> str:
    """What class of connection failure ``err`` is, in a few words (no host, port or path)."""
    causes = list(_causes(err))
    for kinds, words in _CONNECTION_CLASSES:
        if any(isinstance(cause, kinds) for cause in causes):
            return words
    return "connection failed"


def is_read_timeout(err: BaseException) -> bool:
    """A read timeout, also when requests wrapped it in a ``ConnectionError`` (mid-body)."""
    return any(
        isinstance(cause, requests.ReadTimeout | urllib3.exceptions.ReadTimeoutError)
        for cause in _causes(err)
    )
