"""Webhooks: where a task's final status may be posted, how it is signed, how it is delivered.

- :func:`check_webhook_url` decides whether a URL may receive webhooks: http or https, and
  either on the operator's allowlist (``GENQUEUE_WEBHOOK_ALLOWLIST``) or, with no allowlist,
  resolving only to public addresses (never loopback, private, link-local such as
  169.254.169.254, or otherwise reserved ranges). It decides before any connection is made.
- :func:`sign` and :func:`verify_webhook`: ``Genqueue-Signature: v1=<hex>`` is the HMAC-SHA256
  of ``"<timestamp>.<body>"`` with ``GENQUEUE_WEBHOOK_SECRET``; ``Genqueue-Timestamp`` is the
  Unix time in seconds.
- :class:`WebhookSender` posts the status of one task once (no redirects followed, a short
  timeout) and says whether to try again later; the Celery task ``genqueue.webhook`` in
  :mod:`worker.tasks` turns that into retries with backoff, so delivery never holds a
  generation slot. Knows nothing of Celery.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
from pydantic import SecretStr

from worker import keys, records
from worker.backoff import RetryPolicy, compute_delay_s
from worker.contract import TaskStatus
from worker.settings import Settings

log = logging.getLogger("genqueue.webhook")

#: The Celery task that delivers webhooks (consumed by the same workers).
WEBHOOK_TASK_NAME = "genqueue.webhook"
TIMESTAMP_HEADER = "Genqueue-Timestamp"
SIGNATURE_HEADER = "Genqueue-Signature"
SIGNATURE_VERSION = "v1"
#: How old (or how far ahead) a signed timestamp may be before :func:`verify_webhook` refuses it.
DEFAULT_TOLERANCE_S = 300.0
#: Statuses after which another attempt is pointless: the receiver refuses this webhook.
_FINAL_REFUSALS = frozenset(range(400, 500)) - {408, 425, 429}
#: The wait before looking again when the task's result is not stored yet.
_NOT_FINAL_DELAY_S = 0.5

Resolver = Callable[[str, int], Sequence[str]]


class WebhookRefused(ValueError):
    """Raised when a URL may not receive webhooks; the message says why, without the URL."""


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _matches(url: str, entry: str) -> bool:
    """Whether ``url`` is covered by one allowlist entry: a host name, or a URL prefix.

    A prefix matches on scheme, host and port exactly and on whole path segments, so
    ``https://hooks.example.com/in`` covers ``.../in`` and ``.../in/x``, not ``.../inbox`` or
    ``https://hooks.example.com.evil.net/``.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if "://" not in entry:
        return host.rstrip(".") == entry.strip().lower().rstrip(".")
    prefix = urlsplit(entry.strip())
    if (prefix.scheme, (prefix.hostname or "").lower()) != (parts.scheme, host):
        return False
    if (prefix.port or _default_port(prefix.scheme)) != (parts.port or _default_port(parts.scheme)):
        return False
    path = prefix.path.rstrip("/")
    return not path or parts.path == path or parts.path.startswith(path + "/")


def check_webhook_url(
    url: str, allowlist: Sequence[str] = (), resolve: Resolver = _resolve
) -> None:
    """Raise :class:`WebhookRefused` unless ``url`` may receive webhooks.

    With an allowlist, the URL must match one of its entries (and then its address is not
    checked: the operator vouched for it). Without one, every address the host resolves to must
    be public. Literal IP addresses are judged without a lookup; nothing is ever connected to.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or _default_port(parts.scheme)
    except ValueError as err:
        raise WebhookRefused(f"the webhook URL is not valid: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("the webhook URL must be http:// or https:// with a host")
    if allowlist:
        if any(_matches(url, entry) for entry in allowlist):
            return
        raise WebhookRefused("the webhook URL is not on this server's GENQUEUE_WEBHOOK_ALLOWLIST")
    try:
        addresses = resolve(parts.hostname, port)
    except (OSError, UnicodeError):
        raise WebhookRefused("the webhook host could not be resolved") from None
    if not addresses:
        raise WebhookRefused("the webhook host could not be resolved")
    if not all(_is_public(address) for address in addresses):
        raise WebhookRefused(
            "the webhook host is a loopback, private, link-local or reserved address; "
            "the operator may allow it in GENQUEUE_WEBHOOK_ALLOWLIST"
        )


def _secret_bytes(secret: str | bytes | SecretStr) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes | SecretStr, body: bytes, timestamp: int) -> str:
    """The ``Genqueue-Signature`` value for ``body`` sent at ``timestamp`` (Unix seconds)."""
    digest = hmac.new(_secret_bytes(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


def verify_webhook(
    secret: str | bytes | SecretStr,
    body: bytes | str,
    timestamp_header: str | None,
    signature_header: str | None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether a received webhook is genuine and fresh.

    :param secret: the shared ``GENQUEUE_WEBHOOK_SECRET``.
    :param body: the raw request body, exactly as received.
    :param timestamp_header: the ``Genqueue-Timestamp`` header.
    :param signature_header: the ``Genqueue-Signature`` header (``v1=<hex>``; several
        comma-separated values are accepted, any one matching).
    :param tolerance_s: how far the timestamp may be from now, either way (replays of an old
        delivery are refused).
    """
    if not timestamp_header or not signature_header:
        return False
    try:
        timestamp = int(timestamp_header.strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = sign(secret, raw, timestamp).encode()
    candidates = [part.strip().encode() for part in signature_header.split(",")]
    # Compare against every candidate, so the time taken does not depend on which one matched.
    matched = [hmac.compare_digest(expected, candidate) for candidate in candidates]
    return any(matched)


@dataclass(frozen=True)
class WebhookPolicy:
    """How webhooks are sent. Built from the settings' ``webhook_*`` fields."""

    secret: SecretStr | None
    allowlist: tuple[str, ...] = ()
    timeout_s: float = 5.0
    retry_for_s: float = 3_600.0
    retry_max_delay_s: float = 300.0


@dataclass(frozen=True)
class Delivery:
    """What one delivery attempt came to: ``retry_in_s`` set means try again then."""

    outcome: str  # delivered, retry, given_up
    retry_in_s: float | None = None
    status_code: int | None = None


class WebhookSender:
    """Posts a finished task's status to its webhook URL, signed.

    :param client: the Redis client the task records are read from.
    :param policy: the secret, allowlist, timeout and retry bounds.
    :param on_outcome: called with each delivery's outcome (for metrics).
    """

    def __init__(
        self,
        client: redis.Redis,
        policy: WebhookPolicy,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self._redis = client
        self._policy = policy
        self._on_outcome = on_outcome
        self._session: requests.Session | None = None
        self._backoff = RetryPolicy(
            max_attempts=1_000_000,
            base_delay_s=min(1.0, policy.retry_max_delay_s),
            max_delay_s=policy.retry_max_delay_s,
        )

    def _http(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            # No proxy from the environment: the address checked is the address connected to.
            session.trust_env = False
            self._session = session
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def deliver(self, task_id: str, url: str, first_at: float, attempt: int) -> Delivery:
        """One attempt (``attempt`` counts from 0); never raises for a receiver's failure."""
        delivery = self._attempt(task_id, url, first_at, attempt)
        retry_at = time.time() + (delivery.retry_in_s or 0.0)
        if delivery.retry_in_s is not None and retry_at - first_at > self._policy.retry_for_s:
            log.warning(
                "webhook of task %s given up after %d attempts in %.0fs (host %s)",
                task_id, attempt + 1, time.time() - first_at, _host(url),
            )  # fmt: skip
            delivery = Delivery("given_up", status_code=delivery.status_code)
        if self._on_outcome is not None:
            self._on_outcome(delivery.outcome)
        return delivery

    def _attempt(self, task_id: str, url: str, first_at: float, attempt: int) -> Delivery:
        secret = self._policy.secret
        if secret is None or not secret.get_secret_value():
            log.warning("webhook of task %s not sent: GENQUEUE_WEBHOOK_SECRET is not set", task_id)
            return Delivery("given_up")
        try:
            check_webhook_url(url, self._policy.allowlist)
        except WebhookRefused as err:
            log.warning("webhook of task %s not sent: %s", task_id, err)
            return Delivery("given_up")
        status = self._status(task_id)
        if status is None:
            log.warning("webhook of task %s not sent: the task is unknown or expired", task_id)
            return Delivery("given_up")
        if not status.status.is_final:  # Celery stores the result a moment after the end
            return Delivery("retry", retry_in_s=_NOT_FINAL_DELAY_S)
        return self._post(task_id, url, status.model_dump_json().encode(), attempt)

    def _post(self, task_id: str, url: str, body: bytes, attempt: int) -> Delivery:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "genqueue-webhook/1",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._policy.secret or "", body, timestamp),
        }
        timeout = (min(self._policy.timeout_s, 5.0), self._policy.timeout_s)
        try:
            # stream: only the status matters; the receiver's body is never read.
            response = self._http().post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True
            )
            response.close()
        except requests.RequestException as err:
            reason = type(err).__name__
            return self._later(task_id, url, attempt, reason, None)
        code = response.status_code
        if 200 <= code < 300:
            log.info("webhook of task %s delivered (host %s, %d)", task_id, _host(url), code)
            return Delivery("delivered", status_code=code)
        if 300 <= code < 400 or code in _FINAL_REFUSALS:
            log.warning(
                "webhook of task %s given up: the receiver answered %d (redirects are not "
                "followed) (host %s)", task_id, code, _host(url),
            )  # fmt: skip
            return Delivery("given_up", status_code=code)
        return self._later(task_id, url, attempt, f"HTTP {code}", code)

    def _later(
        self, task_id: str, url: str, attempt: int, reason: str, code: int | None
    ) -> Delivery:
        delay_s = compute_delay_s(attempt + 1, None, self._backoff)
        log.info(
            "webhook of task %s attempt %d failed (%s, host %s); retrying in %.1fs",
            task_id, attempt + 1, reason, _host(url), delay_s,
        )  # fmt: skip
        return Delivery("retry", retry_in_s=delay_s, status_code=code)

    def _status(self, task_id: str) -> TaskStatus | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.task_record(task_id))
        pipe.get(keys.celery_result(task_id))
        record, meta = pipe.execute()
        if not record and meta is None:
            return None
        return records.status_from(task_id, record, meta)


def _host(url: str) -> str:
    """The host of a webhook URL, for log lines: its path and query may hold a token."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def policy_from(settings: Settings) -> WebhookPolicy:
    """The :class:`WebhookPolicy` of a :class:`~worker.settings.Settings`."""
    return WebhookPolicy(
        secret=settings.webhook_secret,
        allowlist=tuple(settings.webhook_allowlist),
        timeout_s=settings.webhook_timeout_s,
        retry_for_s=settings.webhook_retry_for_s,
        retry_max_delay_s=settings.webhook_retry_max_delay_s,
    )


def webhook_url_of(args: Any, kwargs: Any) -> str | None:
    """The ``webhook_url`` of a ``genqueue.generate`` message's payload, if it has one."""
    raw = args[0] if args and len(args) == 1 else (kwargs or {}).get("request")
    url = raw.get("webhook_url") if isinstance(raw, dict) else None
    return url if isinstance(url, str) and url else None
