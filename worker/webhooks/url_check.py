"""Which URL a webhook may go to: read once, judged once, sent to exactly as judged.

- :func:`parse_webhook_url` reads a URL with urllib3's parser, the one that connects, and refuses
  anything another parser (Python's ``urlsplit``, a proxy, the receiver) could read differently:
  a backslash, userinfo, an odd port, a percent-encoded or numeric-looking host, ``.``/``..``
  path segments, spaces, control or non-ASCII characters. What it returns is what is sent: the
  host to name (Host header, TLS server name, certificate check), the port and the request target.
- :func:`is_public_address` judges one IP address, including the IPv4 address an IPv6 one
  embeds (IPv4-mapped and -compatible, NAT64, 6to4, Teredo).
- :func:`check_webhook_url` is the one decision, used by the API when a task is submitted and by
  the worker before each delivery: on the allowlist, or resolving only to public addresses. It
  returns the addresses it judged, so the worker connects to those and never looks the name up
  again (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from worker.errors import GenQueueError

#: Resolves ``(host, port)`` to IP addresses; :func:`resolve_host` unless a test gives another.
Resolver = Callable[[str, int], Sequence[str]]

_SCHEMES = ("http", "https")
#: A host whose last label looks numeric is an IPv4 address to some parsers (``127.1``,
#: ``0x7f.1``, ``2130706433``), so it must be one, written the one usual way.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
#: Prefixes that only wrap an IPv4 address: judged by that address alone (as is 6to4).
_IPV4_WRAPPERS = (
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64, well-known prefix
)

_PRIVATE = (
    "the webhook host is a loopback, private, link-local or reserved address; "
    "the operator may allow it in GENQUEUE_WEBHOOK_ALLOWLIST"
)


class WebhookRefused(GenQueueError, ValueError):
    """Raised when a URL may not receive webhooks; the message says why, without the URL.

    A ``ValueError`` too: a refused URL is a value refused (a pydantic validator may raise it)."""

    error_type = "webhook_refused"


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL as it is sent: scheme, host, port and the request target."""

    scheme: str
    #: Lower-case; an IPv6 literal without its brackets.
    host: str
    port: int
    #: Path and query, as they go on the request line (never empty: at least ``/``).
    request_target: str
    #: The path alone, for allowlist prefixes.
    path: str

    @property
    def is_ip_literal(self) -> bool:
        return _ip_or_none(self.host) is not None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _default_port(self.scheme) else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.request_target}"


@dataclass(frozen=True)
class CheckedWebhook:
    """What :func:`check_webhook_url` allowed: where to send, and to which addresses.

    ``addresses`` is ``None`` when the allowlist vouched for the URL without a lookup.
    """

    target: WebhookTarget
    addresses: tuple[str, ...] | None


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system's resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _ip_or_none(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _refuse_characters(url: str) -> None:
    if any(ord(char) <= 32 or ord(char) >= 127 for char in url):
        raise WebhookRefused(
            "the webhook URL must not contain spaces, control or non-ASCII characters "
            "(percent-encode them; write an international host name in its xn-- form)"
        )
    if "\\" in url:
        raise WebhookRefused("the webhook URL must not contain a backslash")


def _split_both(url: str) -> tuple[SplitResult, str, str, int | None, str, str | None]:
    """``urlsplit``'s reading, and urllib3's: (split, scheme, host, port, path, query)."""
    try:
        split = urlsplit(url)
        split_port = split.port
        parsed = parse_url(url)
    except (ValueError, LocationParseError):
        raise WebhookRefused("the webhook URL is not a valid URL") from None
    if parsed.auth is not None or "@" in split.netloc:
        raise WebhookRefused("the webhook URL must not contain a user name or password")
    host = (parsed.host or "").lower().strip("[]")
    if host != (split.hostname or "") or parsed.port != split_port:
        raise WebhookRefused("the webhook URL is ambiguous: its host or port can be read two ways")
    return split, (parsed.scheme or ""), host, parsed.port, parsed.path or "", parsed.query


def _check_host(host: str) -> None:
    if not host:
        raise WebhookRefused("the webhook URL must be http:// or https:// with a host")
    if _ip_or_none(host) is not None:
        return
    labels = host.rstrip(".").split(".")
    if _NUMERIC_LABEL.match(labels[-1]) or not _HOST_NAME.match(host.rstrip(".")):
        raise WebhookRefused(
            "the webhook host must be a host name, a dotted-decimal IPv4 address or a "
            "bracketed IPv6 address"
        )


def _check_port(split: SplitResult, port: int | None) -> None:
    if port is None:
        return
    written = split.netloc.rpartition(":")[2]
    if not 0 < port < 65536 or written != str(port):
        raise WebhookRefused("the webhook URL's port must be a number from 1 to 65535")


def _check_path(path: str) -> None:
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        raise WebhookRefused("the webhook URL's path must not contain '.' or '..' segments")


def parse_webhook_url(url: str) -> WebhookTarget:
    """The :class:`WebhookTarget` of ``url``; raise :class:`WebhookRefused` unless it reads
    exactly one way."""
    _refuse_characters(url)
    split, scheme, host, port, path, query = _split_both(url)
    if scheme not in _SCHEMES:
        raise WebhookRefused("the webhook URL must be http:// or https:// with a host")
    _check_host(host)
    _check_port(split, port)
    _check_path(split.path)  # urllib3 has already removed dot segments from its path
    request_target = (path or "/") + (f"?{query}" if query is not None else "")
    return WebhookTarget(
        scheme=scheme,
        host=host,
        port=port or _default_port(scheme),
        request_target=request_target,
        path=path,
    )


def _judged(
    ip: ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses an IPv6 address stands for: itself, or the IPv4 address it carries."""
    if any(ip in wrapper for wrapper in _IPV4_WRAPPERS):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)]
    if ip.sixtofour is not None:  # relayed to the IPv4 address it embeds
        return [ip.sixtofour]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [ip, server, client]
    return [ip]


def _public_one(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or site_local)


def is_public_address(address: str) -> bool:
    """Whether a webhook may go to ``address``: a global unicast address, and so is any IPv4
    address it embeds (``::ffff:169.254.169.254``, ``64:ff9b::a9fe:a9fe`` and the like are not)."""
    ip = _ip_or_none(address.split("%", 1)[0])
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return _public_one(ip)
    return all(_public_one(each) for each in _judged(ip))


def _matches(target: WebhookTarget, entry: str) -> bool:
    """Whether ``target`` is covered by one allowlist entry: a host name, or a URL prefix.

    A prefix matches on scheme, host and port exactly and on whole path segments, so
    ``https://hooks.example.com/in`` covers ``.../in`` and ``.../in/x``, not ``.../inbox`` or
    ``https://hooks.example.com.evil.net/``.
    """
    entry = entry.strip()
    if "://" not in entry:
        return target.host.rstrip(".") == entry.lower().strip("[]").rstrip(".")
    try:
        prefix = parse_webhook_url(entry)
    except WebhookRefused:
        return False
    if (prefix.scheme, prefix.host.rstrip("."), prefix.port) != (
        target.scheme, target.host.rstrip("."), target.port,
    ):  # fmt: skip
        return False
    path = prefix.path.rstrip("/")
    return not path or target.path == path or target.path.startswith(path + "/")


def check_allowlist_entry(entry: str) -> None:
    """Raise :class:`WebhookRefused` unless ``entry`` is a host name, an IP address or a URL
    prefix that reads one way only (an entry that cannot match anything is a mistake)."""
    entry = entry.strip()
    if "://" in entry:
        parse_webhook_url(entry)
        return
    host = f"[{entry}]" if ":" in entry and not entry.startswith("[") else entry
    try:
        parsed = parse_webhook_url(f"http://{host}/").host
    except WebhookRefused:
        parsed = None
    if parsed != entry.lower().strip("[]"):
        raise WebhookRefused(
            "an allowlist entry must be a host name, an IP address or an http(s) URL prefix"
        )


def check_webhook_url(
    url: str, allowlist: Sequence[str] = (), resolve: Resolver = resolve_host
) -> CheckedWebhook:
    """Where ``url`` may receive webhooks; raise :class:`WebhookRefused` if nowhere.

    With an allowlist, the URL must match one of its entries (and then its address is not
    checked: the operator vouched for it). Without one, every address the host resolves to must
    be public, and those are the addresses to connect to. Literal IP addresses are judged
    without a lookup; nothing is ever connected to.
    """
    target = parse_webhook_url(url)
    if allowlist:
        if any(_matches(target, entry) for entry in allowlist):
            return CheckedWebhook(target, None)
        raise WebhookRefused("the webhook URL is not on this server's GENQUEUE_WEBHOOK_ALLOWLIST")
    if target.is_ip_literal:
        addresses: Sequence[str] = [target.host]
    else:
        try:
            addresses = resolve(target.host, target.port)
        except (OSError, UnicodeError):
            raise WebhookRefused("the webhook host could not be resolved") from None
    if not addresses:
        raise WebhookRefused("the webhook host could not be resolved")
    if not all(is_public_address(address) for address in addresses):
        raise WebhookRefused(_PRIVATE)
    return CheckedWebhook(target, tuple(addresses))


def webhook_host(url: str) -> str:
    """The host of a webhook URL, for log lines (its path and query may hold a token)."""
    try:
        return parse_webhook_url(url).host
    except WebhookRefused:
        return "?"
