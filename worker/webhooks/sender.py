"""Webhooks: where a task's final status may be posted, how it is signed, how it is delivered.

- :func:`check_webhook_url` (:mod:`worker.webhooks.url_check`) decides whether a URL may receive
  webhooks: read one way only, http or https, and either on the operator's allowlist
  (``GENQUEUE_WEBHOOK_ALLOWLIST``) or, with no allowlist, resolving only to public addresses
  (never loopback, private, link-local such as 169.254.169.254, or otherwise reserved ranges,
  nor an IPv6 address embedding one). It decides before any connection is made.
- :func:`sign` and :func:`verify_webhook`: ``Genqueue-Signature: v1=<hex>`` is the HMAC-SHA256
  of ``"<timestamp>.<body>"`` with ``GENQUEUE_WEBHOOK_SECRET``; ``Genqueue-Timestamp`` is the
  Unix time in seconds.
- :class:`WebhookSender` posts the status of one task once, to exactly the URL checked and to
  the very addresses checked (no second DNS lookup; the Host header, TLS server name and
  certificate check name the host), with no redirects followed and a short timeout, and says
  whether to try again later; the Celery task ``genqueue.webhook`` in
  :mod:`worker.tasks` turns that into retries with backoff, so delivery never holds a
  generation slot. Knows nothing of Celery.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import urllib3
from pydantic import SecretStr
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from worker.contract import TaskStatus
from worker.delivery import records
from worker.pipeline.backoff import RetryPolicy, compute_delay_s
from worker.settings import Settings, default_of
from worker.webhooks.transport import PostTimeouts, post_pinned
from worker.webhooks.url_check import (
    CheckedWebhook,
    Resolver,
    WebhookRefused,
    check_webhook_url,
    is_public_address,
    resolve_host,
    webhook_host,
)

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WEBHOOK_TASK_NAME",
    "Delivery",
    "WebhookPolicy",
    "WebhookRefused",
    "WebhookSender",
    "check_webhook_url",
    "is_public_address",
    "policy_from",
    "sign",
    "verify_webhook",
    "webhook_url_of",
]

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
    timeout_s: float = default_of("webhook_timeout_s")
    retry_for_s: float = default_of("webhook_retry_for_s")
    retry_max_delay_s: float = default_of("webhook_retry_max_delay_s")


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
    :param resolve: looks host names up (the system's resolver; tests give their own).
    :param ca_certs: the CA bundle HTTPS receivers' certificates are checked against (the
        ``certifi`` bundle ``requests`` uses, by default).
    :param tenant_secret: a tenant's own signing secret, if it has one (the tenants file);
        the others' webhooks are signed with ``GENQUEUE_WEBHOOK_SECRET``.
    :param results: a client on the Redis of Celery's results, when not ``client``'s.
    """

    def __init__(
        self,
        client: redis.Redis,
        policy: WebhookPolicy,
        on_outcome: Callable[[str], None] | None = None,
        resolve: Resolver = resolve_host,
        ca_certs: str | None = None,
        tenant_secret: Callable[[str], SecretStr | None] | None = None,
        results: redis.Redis | None = None,
    ) -> None:
        self._redis = client
        self._results = results or client
        self._policy = policy
        self._tenant_secret = tenant_secret
        self._on_outcome = on_outcome
        self._resolve = resolve
        self._ca_certs = ca_certs or DEFAULT_CA_BUNDLE_PATH
        self._backoff = RetryPolicy(
            max_attempts=1_000_000,
            base_delay_s=min(1.0, policy.retry_max_delay_s),
            max_delay_s=policy.retry_max_delay_s,
        )

    def close(self) -> None:
        """Nothing to release: each delivery opens and closes its own connection."""

    def deliver(
        self, task_id: str, url: str, first_at: float, attempt: int, tenant: str | None = None
    ) -> Delivery:
        """One attempt (``attempt`` counts from 0); never raises for a receiver's failure."""
        secret = self._secret(tenant)
        delivery = self._attempt(task_id, url, secret, attempt)
        retry_at = time.time() + (delivery.retry_in_s or 0.0)
        if delivery.retry_in_s is not None and retry_at - first_at > self._policy.retry_for_s:
            log.warning(
                "webhook of task %s given up after %d attempts in %.0fs (host %s)",
                task_id, attempt + 1, time.time() - first_at, webhook_host(url),
            )  # fmt: skip
            delivery = Delivery("given_up", status_code=delivery.status_code)
        if self._on_outcome is not None:
            self._on_outcome(delivery.outcome)
        return delivery

    def _secret(self, tenant: str | None) -> SecretStr | None:
        """The tenant's own secret, else the server's."""
        own = self._tenant_secret(tenant) if tenant and self._tenant_secret else None
        return own or self._policy.secret

    def _attempt(self, task_id: str, url: str, secret: SecretStr | None, attempt: int) -> Delivery:
        if secret is None or not secret.get_secret_value():
            log.warning("webhook of task %s not sent: GENQUEUE_WEBHOOK_SECRET is not set", task_id)
            return Delivery("given_up")
        try:
            checked = self._checked(url)
        except WebhookRefused as err:
            log.warning("webhook of task %s not sent: %s", task_id, err)
            return Delivery("given_up")
        status = self._status(task_id)
        if status is None:
            log.warning("webhook of task %s not sent: the task is unknown or expired", task_id)
            return Delivery("given_up")
        if not status.status.is_final:  # Celery stores the result a moment after the end
            return Delivery("retry", retry_in_s=_NOT_FINAL_DELAY_S)
        body = status.model_dump_json().encode()
        return self._post(task_id, checked, body, sign_with=secret, attempt=attempt)

    def _checked(self, url: str) -> CheckedWebhook:
        """The check, with the addresses to connect to: those judged, or (for an allowlisted
        URL) those of one lookup made now."""
        checked = check_webhook_url(url, self._policy.allowlist, self._resolve)
        if checked.addresses is not None:
            return checked
        target = checked.target
        if target.is_ip_literal:
            return CheckedWebhook(target, (target.host,))
        try:
            addresses = tuple(self._resolve(target.host, target.port))
        except (OSError, UnicodeError):
            raise WebhookRefused("the webhook host could not be resolved") from None
        if not addresses:
            raise WebhookRefused("the webhook host could not be resolved")
        return CheckedWebhook(target, addresses)

    def _post(
        self,
        task_id: str,
        checked: CheckedWebhook,
        body: bytes,
        *,
        sign_with: SecretStr,
        attempt: int,
    ) -> Delivery:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "genqueue-webhook/1",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(sign_with, body, timestamp),
        }
        timeouts = PostTimeouts(min(self._policy.timeout_s, 5.0), self._policy.timeout_s)
        host = checked.target.host
        try:
            code = post_pinned(
                checked.target, checked.addresses or (), body, headers, timeouts, self._ca_certs
            )
        except (urllib3.exceptions.HTTPError, OSError) as err:
            return self._later(task_id, host, attempt, type(err).__name__, None)
        if 200 <= code < 300:
            log.info("webhook of task %s delivered (host %s, %d)", task_id, host, code)
            return Delivery("delivered", status_code=code)
        if 300 <= code < 400 or code in _FINAL_REFUSALS:
            log.warning(
                "webhook of task %s given up: the receiver answered %d (redirects are not "
                "followed) (host %s)", task_id, code, host,
            )  # fmt: skip
            return Delivery("given_up", status_code=code)
        return self._later(task_id, host, attempt, f"HTTP {code}", code)

    def _later(
        self, task_id: str, host: str, attempt: int, reason: str, code: int | None
    ) -> Delivery:
        delay_s = compute_delay_s(attempt + 1, None, self._backoff)
        log.info(
            "webhook of task %s attempt %d failed (%s, host %s); retrying in %.1fs",
            task_id, attempt + 1, reason, host, delay_s,
        )  # fmt: skip
        return Delivery("retry", retry_in_s=delay_s, status_code=code)

    def _status(self, task_id: str) -> TaskStatus | None:
        return records.read_status(self._redis, self._results, task_id)


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
