"""The first step of a task: its Celery payload read against the wire contract."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from worker.contract import GenerationRequest
from worker.errors import InvalidRequest
from worker.webhooks.url_check import WebhookRefused, parse_webhook_url


def parse_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> GenerationRequest:
    """The request from a Celery message: ``kwargs={"request": {...}}`` (or one positional)."""
    if not args and set(kwargs) == {"request"}:
        raw = kwargs["request"]
    elif len(args) == 1 and not kwargs:
        raw = args[0]
    else:
        raise InvalidRequest(
            "genqueue.generate takes one keyword argument 'request' (a JSON object); "
            f"got {len(args)} positional and keyword {sorted(kwargs)}"
        )
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'request' must be a JSON object, not {type(raw).__name__}")
    try:
        request = GenerationRequest.model_validate(raw)
    except ValidationError as err:
        raise InvalidRequest(f"invalid request: {describe_errors(err)}") from None
    if request.webhook_url is not None:
        try:
            parse_webhook_url(request.webhook_url)  # read the one way it would be sent
        except WebhookRefused as err:
            raise InvalidRequest(f"invalid request: webhook_url: {err}") from None
    return request


def describe_errors(err: ValidationError) -> str:
    """Pydantic errors as ``field: reason`` without echoing the (possibly large) input."""
    parts = []
    for problem in err.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in problem["loc"]) or "request"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)
