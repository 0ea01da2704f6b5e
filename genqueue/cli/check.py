"""``genqueue check [ENDPOINT]``: is an endpoint ready for work, and if not, why, in words.

For each OpenAI-style endpoint (or the one named): ``GET {base}/v1/models``, then one 1-token
completion, as the worker would send it. What is wrong is said as a user would fix it: the
server does not answer (and how), the key is refused (and which variable holds it), no model is
loaded (text-generation-webui answers a plain-text 500 then), the URL's path is not the
server's base. ``genqueue up`` runs the same check at start and prints one line of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from worker.endpoints.clients import endpoint_api_key
from worker.endpoints.config import OPENAI_STYLE_KINDS, EndpointSpec, require_endpoints
from worker.endpoints.disclosure import KEY_MARK, connection_failure, looks_like_html
from worker.settings import Settings, env_name

#: The longest wait for one answer of a check (``genqueue up`` waits less at start).
READ_TIMEOUT_S = 30.0
UP_READ_TIMEOUT_S = 10.0
#: How much of an endpoint's own words an error quotes.
_QUOTE_CHARS = 160
#: (connect, read) seconds.
Timeout = tuple[float, float]


@dataclass(frozen=True)
class Verdict:
    """What the check found for one endpoint: ``ok``, and a sentence saying what, or why not."""

    name: str
    url: str
    ok: bool
    says: str

    def line(self) -> str:
        return f"endpoint {self.name} ({self.url}): {'ok' if self.ok else 'NOT READY'}: {self.says}"


class _Problem(Exception):
    """Raised inside a check with the sentence that says what is wrong."""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    check = sub.add_parser(
        "check",
        help="check that an endpoint answers: /v1/models and a 1-token completion",
        description="Call each configured endpoint's /v1/models (or ENDPOINT's only) and send "
        "it one 1-token completion; say in words what is wrong: unreachable, a refused key "
        "(and which variable holds it), no model loaded, a URL whose path is not the "
        "server's base. Exit status 1 when one is not ready.",
    )
    check.add_argument("endpoint", nargs="?", help="a configured endpoint's name (default: all)")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    endpoints = require_endpoints(settings)
    names = endpoints.names
    if args.endpoint is not None:
        if args.endpoint not in endpoints:
            known = ", ".join(names)
            print(
                f"genqueue check: no endpoint {args.endpoint!r} (configured: {known})",
                file=sys.stderr,
            )
            return 2
        names = [args.endpoint]
    verdicts = [check_endpoint(endpoints.get(name), settings) for name in names]
    for verdict in verdicts:
        print(verdict.line(), file=sys.stdout if verdict.ok else sys.stderr, flush=True)
    return 0 if all(v.ok for v in verdicts) else 1


def summary(settings: Settings) -> str:
    """One line for ``genqueue up``: every endpoint's verdict, briefly."""
    endpoints = require_endpoints(settings)
    verdicts = [
        check_endpoint(endpoints.get(name), settings, UP_READ_TIMEOUT_S) for name in endpoints.names
    ]
    if all(v.ok for v in verdicts) and len(verdicts) > 1:
        return f"{len(verdicts)} endpoints ready"
    said = [f"{v.name}: {v.says}" if not v.ok else f"{v.name}: ready ({v.says})" for v in verdicts]
    return "; ".join(said)


def check_endpoint(
    spec: EndpointSpec, settings: Settings, read_timeout_s: float = READ_TIMEOUT_S
) -> Verdict:
    """Check ``spec`` now: its models, then a 1-token completion, with the worker's key."""
    if spec.kind not in OPENAI_STYLE_KINDS:
        return Verdict(spec.name, spec.base_url, True, f"a {spec.kind} endpoint: not checked")
    key = endpoint_api_key(spec, settings)
    session = requests.Session()
    if key:
        session.headers["Authorization"] = f"Bearer {key}"
    timeout = (spec.connect_timeout_s, min(spec.read_timeout_s, read_timeout_s))
    try:
        models = _models(session, spec, timeout, key)
        took_ms = _one_token(session, spec, timeout, key)
    except _Problem as problem:
        return Verdict(spec.name, spec.base_url, False, _without_key(str(problem), key))
    finally:
        session.close()
    listed = f"serves {', '.join(models)}" if models else "lists no models"
    return Verdict(spec.name, spec.base_url, True, f"{listed}; 1 token in {took_ms} ms")


def _call(
    session: requests.Session, method: str, url: str, timeout: Timeout, **kw: Any
) -> requests.Response:
    try:
        return session.request(method, url, timeout=timeout, **kw)
    except requests.Timeout as err:
        if isinstance(err, requests.ConnectTimeout):
            raise _Problem(
                f"unreachable: no connection to {_host(url)} within {timeout[0]:g} s"
            ) from None
        raise _Problem(f"{url} did not answer within {timeout[1]:g} s") from None
    except requests.RequestException as err:
        raise _Problem(
            f"unreachable: {connection_failure(err)} at {_host(url)}: is the server running "
            "there, and are the host and port right?"
        ) from None


def _models(
    session: requests.Session, spec: EndpointSpec, timeout: Timeout, key: str | None
) -> list[str]:
    url = f"{spec.base_url}/v1/models"
    response = _call(session, "GET", url, timeout)
    if response.status_code == 404:
        return []  # some servers have no /v1/models: the completion says whether the path is right
    _raise_for(response, spec, key)
    try:
        data = response.json().get("data") or []
        return [str(model.get("id")) for model in data if isinstance(model, dict)]
    except (ValueError, AttributeError):
        raise _Problem(f"{url} answered 200 but not the JSON of an OpenAI server") from None


def _one_token(
    session: requests.Session, spec: EndpointSpec, timeout: Timeout, key: str | None
) -> int:
    body: dict[str, Any] = {"max_tokens": 1}
    if spec.chat:
        body["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        body["prompt"] = "Hi"
    if spec.model:
        body["model"] = spec.model
    start = time.monotonic()
    response = _call(session, "POST", spec.completions_url, timeout, json=body)
    _raise_for(response, spec, key)
    try:
        choices = response.json()["choices"]
        assert isinstance(choices, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise _Problem(
            f"{spec.completions_url} answered 200 but not an OpenAI completion"
        ) from None
    return round((time.monotonic() - start) * 1000)


def _raise_for(response: requests.Response, spec: EndpointSpec, key: str | None) -> None:
    """Say what is wrong with a failed answer, as its cause would be fixed."""
    status = response.status_code
    if status < 400:
        return
    url = response.url
    if status in (401, 403):
        raise _Problem(f"{status} from {url}: {_key_advice(spec, key)}")
    if status == 404:
        raise _Problem(f"404 from {url}: {_path_advice(spec)}")
    text = response.text.strip()
    plain = response.headers.get("Content-Type", "").startswith("text/plain")
    if status == 500 and plain and text in ("Internal Server Error", ""):
        raise _Problem(
            f"500 (plain text) from {url}: no model loaded? text-generation-webui answers so "
            "without one: load a model in its Model tab, or start it with --model"
        )
    words = "" if looks_like_html(text) else f": {' '.join(text.split())[:_QUOTE_CHARS]}"
    raise _Problem(f"{status} from {url}{words}")


def _key_advice(spec: EndpointSpec, key: str | None) -> str:
    variable = spec.api_key_env
    if variable is None:
        return (
            "the server wants a key: set RUNPOD_API_KEY (or the endpoint's api_key_env in "
            f"{env_name('endpoints_file')}) to the variable that holds it"
        )
    if not key:
        return f"the server wants a key, and {variable} (which holds it) is unset"
    return f"the server refused the key in {variable}"


def _path_advice(spec: EndpointSpec) -> str:
    parts = urlsplit(spec.url or spec.base_url)
    base = f"{parts.scheme}://{parts.netloc}"
    if parts.path.strip("/"):
        return (
            f"the URL's path {parts.path!r} is not the server's: give its base URL, such as "
            f"{base} (genqueue adds /v1/completions)"
        )
    return f"{base} has no /v1/completions: is it an OpenAI-compatible server (kind {spec.kind})?"


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _without_key(words: str, key: str | None) -> str:
    return words.replace(key, KEY_MARK) if key else words
