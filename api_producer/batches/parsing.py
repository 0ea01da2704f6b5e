"""Reading a batch body a piece at a time, and checking each line as ``POST /v1/tasks`` would."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Generator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr, ValidationError

from api_producer.batches.models import (
    CUSTOM_ID_MAX_CHARS,
    JSON_TYPE,
    JSONL_TYPES,
    PROBLEMS_SHOWN,
    BatchInvalid,
    BatchLine,
    BatchRules,
    UnreadableBody,
    UnsupportedMediaType,
)
from worker.contract import GenerationRequest, unicode_problem
from worker.endpoints.params import request_problem
from worker.settings import Settings
from worker.webhooks.sender import WebhookRefused, check_webhook_url

#: Requests of a JSON body validated between two rate-limit charges.
JSON_GROUP = 1000
_DECODER = json.JSONDecoder()
_JSON_HEAD = re.compile(r'\s*\{\s*"requests"\s*:\s*\[\s*')
_SPACE = re.compile(r"\s*")

#: ``(where, value)``: a JSONL line still undecoded (bytes), or a decoded JSON element.
Item = tuple[str, Any]


class BatchParser:
    """A batch body read a piece at a time; nothing of it is kept but the validated requests.

    A JSONL body is split into lines as it arrives (:meth:`feed`); a line is decoded and
    validated only when :meth:`check` is given it, so the caller can charge the rate limit in
    between. The line past ``rules.max_requests`` refuses the batch before the rest is read.
    A JSON body (``{"requests": [...]}``) is held until :meth:`end`, then decoded an element at
    a time. Raises :class:`BatchRefused` subclasses.
    """

    def __init__(self, content_type: str, rules: BatchRules) -> None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in JSONL_TYPES and media_type != JSON_TYPE:
            allowed = ", ".join(sorted(JSONL_TYPES | {JSON_TYPE}))
            raise UnsupportedMediaType(f"send the batch as one of {allowed}")
        self._rules = rules
        self._jsonl = media_type != JSON_TYPE
        self._pending = bytearray()
        self._number = 0
        self._count = 0
        self.lines: list[BatchLine] = []
        self._problems: list[str] = []
        self._problem_count = 0
        self._first_seen: dict[str, str] = {}

    def feed(self, chunk: bytes) -> list[Item]:
        """The complete, non-blank JSONL lines ``chunk`` ends; none for a JSON body."""
        self._pending += chunk
        if not self._jsonl:
            return []
        cut = self._pending.rfind(b"\n")
        if cut < 0:
            return []
        # Split on "\n" only: JSON strings may hold U+2028 and others splitlines() cuts at.
        complete = bytes(self._pending[:cut])
        del self._pending[: cut + 1]
        return self._jsonl_items(complete.split(b"\n"))

    def end(self) -> Iterator[list[Item]]:
        """What is left once the body is read: the last JSONL line, or the JSON body's requests."""
        rest, self._pending = bytes(self._pending), bytearray()
        if self._jsonl:
            items = self._jsonl_items([rest])
            if items:
                yield items
            return
        elements = _json_elements(_utf8(rest))
        while group := list(itertools.islice(elements, JSON_GROUP)):
            self._count_requests(len(group), group[-1][0])
            yield group

    def check(self, items: list[Item]) -> None:
        """Decode and validate ``items``: the valid join :attr:`lines`, the others are noted."""
        for where, value in items:
            try:
                line = _line(where, _decoded(value), self._rules)
            except BatchInvalid as err:
                self._problem(f"{where}: {err}")
                continue
            earlier = self._first_seen.setdefault(line.custom_id, where)
            if earlier != where:
                self._problem(f"{where}: custom_id {line.custom_id!r} is already on {earlier}")
                continue
            if not self._problems:
                self.lines.append(line)

    def result(self) -> list[BatchLine]:
        """Every request, validated; :class:`BatchInvalid` naming the bad lines."""
        if self._problems:
            shown = "; ".join(self._problems)
            more = self._problem_count - len(self._problems)
            raise BatchInvalid(shown + (f" (and {more} more invalid lines)" if more > 0 else ""))
        if not self.lines:
            raise BatchInvalid("the batch holds no requests")
        return self.lines

    def _jsonl_items(self, raw_lines: list[bytes]) -> list[Item]:
        items: list[Item] = []
        for raw in raw_lines:
            self._number += 1
            if raw.strip():
                self._count_requests(1, f"line {self._number}")
                items.append((f"line {self._number}", raw))
        return items

    def _count_requests(self, count: int, last: str) -> None:
        self._count += count
        limit = self._rules.max_requests
        if self._count > limit:
            raise BatchInvalid(
                f"a batch holds at most {limit} requests, this one has more ({last} is past that)"
            )

    def _problem(self, text: str) -> None:
        self._problem_count += 1
        self.lines.clear()  # an invalid batch is refused whole: keep no requests
        if len(self._problems) < PROBLEMS_SHOWN:
            self._problems.append(text)


def parse_batch(body: bytes, content_type: str, rules: BatchRules) -> list[BatchLine]:
    """Every request of the body, validated; :class:`BatchRefused` naming the bad lines."""
    parser = BatchParser(content_type, rules)
    parser.check(parser.feed(body))
    for items in parser.end():
        parser.check(items)
    return parser.result()


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableBody("the body is not UTF-8 text") from None


def _decoded(value: Any) -> Any:
    """A JSONL line's JSON value (or the :class:`BatchInvalid` saying it is not JSON)."""
    if not isinstance(value, bytes):
        return value
    try:
        return json.loads(_utf8(value))
    except json.JSONDecodeError as err:
        return BatchInvalid(f"not JSON ({err.msg} at column {err.colno})")


def _json_elements(text: str) -> Iterator[Item]:
    """``{"requests": [...]}``'s elements, decoded one at a time (never the whole tree)."""
    head = _JSON_HEAD.match(text)
    if head is None:
        yield from _json_items(text)  # spelled another way, or not a batch: the slow, exact path
        return
    pos = head.end()
    if text.startswith("]", pos):
        pos += 1
    else:
        pos = yield from _json_array(text, pos)
    if text[pos:].strip() != "}":
        raise BatchInvalid('a JSON batch is an object {"requests": [...]} and nothing else')


def _json_array(text: str, pos: int) -> Generator[Item, None, int]:
    """The elements of the array at ``pos`` (just past its ``[``); returns the end's position."""
    for number in itertools.count(1):
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise BatchInvalid(f"the body is not JSON ({err.msg} at line {err.lineno})") from None
        yield f"request {number}", value
        pos = _skip_space(text, pos)
        if not text.startswith(",", pos):
            break
        pos = _skip_space(text, pos + 1)
    if not text.startswith("]", pos):
        raise BatchInvalid("the body is not JSON (expecting ',' or ']' after a request)")
    return pos + 1


def _skip_space(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    return match.end() if match else pos


def _json_items(text: str) -> list[Item]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise BatchInvalid(f"the body is not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(body, dict) or set(body) != {"requests"}:
        raise BatchInvalid('a JSON batch is an object {"requests": [...]} and nothing else')
    requests_ = body["requests"]
    if not isinstance(requests_, list):
        raise BatchInvalid("requests must be a list")
    return [(f"request {number}", value) for number, value in enumerate(requests_, start=1)]


def _line(where: str, value: Any, rules: BatchRules) -> BatchLine:
    if isinstance(value, BatchInvalid):
        raise value
    if not isinstance(value, dict):
        raise BatchInvalid("a request must be a JSON object")
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise BatchInvalid("custom_id: a non-empty string is required")
    if len(custom_id) > CUSTOM_ID_MAX_CHARS:
        raise BatchInvalid(f"custom_id: longer than {CUSTOM_ID_MAX_CHARS} characters")
    unreadable = unicode_problem(custom_id, "custom_id")
    if unreadable is not None:
        raise BatchInvalid(unreadable)
    fields = {k: v for k, v in value.items() if k != "custom_id"}
    fields.setdefault("priority", rules.default_priority)
    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as err:
        raise BatchInvalid(describe_validation_error(err)) from None
    _check_request(request, rules)
    return BatchLine(where=where, custom_id=custom_id, request=request)


def _check_request(request: GenerationRequest, rules: BatchRules) -> None:
    """The checks ``POST /v1/tasks`` makes beyond the model: deadline and template."""
    if request.deadline is not None and request.deadline <= datetime.now(UTC):
        raise BatchInvalid("the deadline is already in the past")
    if rules.templates is not None and request.template not in rules.templates:
        known = ", ".join(sorted(rules.templates))
        raise BatchInvalid(f"unknown template {request.template!r} (known: {known})")
    endpoints = rules.endpoints
    if request.endpoint is not None and endpoints is not None and request.endpoint not in endpoints:
        raise BatchInvalid(f"unknown endpoint {request.endpoint!r}")
    problem = request_problem(rules.endpoint_specs, request) if rules.endpoint_specs else None
    if problem is not None:
        raise BatchInvalid(problem)


def describe_validation_error(err: ValidationError) -> str:
    """``field.path: message`` for each problem, never the input itself."""
    parts = []
    for problem in err.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"])
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts)


def check_webhooks(
    lines: Sequence[BatchLine], settings: Settings, tenant_secret: SecretStr | None = None
) -> None:
    """Refuse a ``webhook_url`` this server may not post to (resolves host names: blocking)."""
    verdicts: dict[str, str | None] = {}
    secret = tenant_secret or settings.webhook_secret
    for line in lines:
        url = line.request.webhook_url
        if url is None:
            continue
        if secret is None or not secret.get_secret_value():
            raise BatchInvalid(
                f"{line.where}: webhook_url: webhooks are off on this server "
                "(no GENQUEUE_WEBHOOK_SECRET)"
            )
        if url not in verdicts:
            try:
                check_webhook_url(url, settings.webhook_allowlist)
                verdicts[url] = None
            except WebhookRefused as err:
                verdicts[url] = str(err)
        if verdicts[url] is not None:
            raise BatchInvalid(f"{line.where}: webhook_url: {verdicts[url]}")
