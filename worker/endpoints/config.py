"""Named endpoints: where generations can go, read from one TOML file.

    # GENQUEUE_ENDPOINTS_FILE=endpoints.toml
    [endpoints.big]
    kind = "textgen"                 # a text-generation-webui pod (POST {url}/v1/completions)
    url = "https://abc123-5000.proxy.runpod.net"
    api_key_env = "BIG_POD_KEY"      # the variable that holds its key (never the key itself)
    max_concurrency = 1
    fallbacks = ["small"]

    [endpoints.small]
    kind = "vllm"                    # a vLLM OpenAI server, e.g. RunPod's vLLM route
    url = "https://api.runpod.ai/v2/xyz789/openai/v1"
    api_key_env = "RUNPOD_API_KEY"
    model = "mistralai/Mistral-7B-Instruct-v0.2"

    [endpoints.spare]
    kind = "runpod-serverless"       # RunPod Serverless /run + /status, or /runsync
    endpoint_id = "xyz789"
    api_key_env = "RUNPOD_API_KEY"

    [endpoints.pool]
    kind = "llamacpp"                # a pool: replicas of one model (docs/endpoints.md)
    urls = ["http://10.0.0.5:8080", "http://10.0.0.6:8080"]
    max_concurrency = 4              # per replica
    affinity = "prefix"              # or "session" (metadata.session), "off" (the default)

``RUNPOD_ENDPOINT_URL`` alone still works: it defines the endpoint ``default``. An invalid file
stops the service at start with the line and the field at fault.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.config.toml_lines import read_named_tables
from worker.contract import ENDPOINT_NAME_PATTERN
from worker.errors import SettingsError
from worker.keys import queue_for as queue_for  # where worker/pipeline imports it from
from worker.limits.auto_limit import AUTO, AutoBounds, check_auto_bound, check_max_concurrency
from worker.settings import (
    POD_PROXY_TIMEOUT_S,
    Fairness,
    Settings,
    default_of,
    endpoint_base,
    env_name,
)

DEFAULT_ENDPOINT = "default"
RUNPOD_API_BASE = "https://api.runpod.ai/v2"
NAME_PATTERN = ENDPOINT_NAME_PATTERN

EndpointKind = Literal["textgen", "vllm", "llamacpp", "openai", "runpod-serverless"]
#: The kinds that speak the OpenAI completions API at ``{url}/v1/completions``.
OPENAI_STYLE_KINDS = frozenset({"textgen", "vllm", "llamacpp", "openai"})
#: How a pool keeps requests on the replica that served the same prefix (or session) last.
Affinity = Literal["off", "prefix", "session"]


class EndpointSpec(BaseModel):
    """One endpoint, as an operator describes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    kind: EndpointKind = "textgen"
    #: Base URL, with or without a trailing ``/v1`` (or ``/v1/completions``): generations go
    #: to ``{url}/v1/completions``;
    #: for ``runpod-serverless``, the endpoint's base (``https://api.runpod.ai/v2/<id>``).
    url: str | None = Field(default=None, pattern=r"^https?://")
    #: A pool: the base URLs of replicas of one model, each with its own cap
    #: (``max_concurrency`` applies per replica), breaker and health (docs/endpoints.md).
    urls: tuple[str, ...] | None = None
    #: A pool's requests sharing a prompt prefix (``prefix``) or ``metadata.session``
    #: (``session``) go to the replica that served it last, while it has room.
    affinity: Affinity = "off"
    #: RunPod endpoint id, for the ``runpod-serverless``, ``vllm`` and ``openai`` kinds.
    endpoint_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    model: str | None = None
    #: A fixed cap, or "auto": found from measured latency within the two bounds below
    #: (worker.limits.auto_limit), which are given only with "auto".
    max_concurrency: int | Literal["auto"] = 1
    auto_min_concurrency: int | None = None
    auto_max_concurrency: int | None = None
    #: Shared by all workers; 0 for no limit. Tokens are counted after each call.
    requests_per_minute: int = Field(default=0, ge=0)
    tokens_per_minute: int = Field(default=0, ge=0)
    connect_timeout_s: float = Field(default=default_of("endpoint_connect_timeout_s"), gt=0, le=60)
    read_timeout_s: float = Field(
        default=default_of("endpoint_read_timeout_s"), gt=0, lt=POD_PROXY_TIMEOUT_S
    )
    template: str | None = None
    #: Send ``messages`` to ``/v1/chat/completions`` as they are (the server's chat template).
    chat: bool = False
    #: For ``runpod-serverless``: ``run`` (queue, then poll ``/status``) or ``runsync``.
    mode: Literal["run", "runsync"] = "run"
    fallbacks: tuple[str, ...] = ()
    #: Refuse (at submission) a sampler parameter this endpoint's kind does not take.
    strict_params: bool = True
    #: A RunPod pod genqueue starts when work comes and stops when idle (worker/endpoints/pods).
    runpod_pod_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    #: Stop the pod after this long without a call (unset: never stopped).
    idle_stop_after_s: float | None = Field(default=None, gt=0, le=30 * 86_400)
    #: The variable holding the RunPod account key the control calls send.
    control_api_key_env: str = Field(default="RUNPOD_API_KEY", pattern=r"^[A-Z_][A-Z0-9_]*$")
    #: The most a task waits for the pod to run and load its model before it falls back or
    #: fails.
    pod_ready_timeout_s: float = Field(default=900.0, gt=0, le=86_400)
    #: Stop the pod when idle even when a person (not genqueue) started it.
    stop_pods_started_by_others: bool = False
    #: The pod's price, for the cost in usage and status.
    usd_per_hour: float | None = Field(default=None, ge=0, le=10_000)
    #: How tenants share the endpoint's slots: ``tasks`` (a turn is a task, by weight) or
    #: ``tokens`` (a turn costs its tokens: the Virtual Token Counter; docs/scheduling.md).
    fairness: Fairness = "tasks"

    @field_validator("max_concurrency", mode="before")
    @classmethod
    def _cap(cls, value: object, info: ValidationInfo) -> int | str:
        return check_max_concurrency(value, info.data.get("kind"))

    @field_validator("auto_min_concurrency", "auto_max_concurrency", mode="before")
    @classmethod
    def _bound(cls, value: object, info: ValidationInfo) -> int:
        assert info.field_name is not None
        return check_auto_bound(info.field_name, value, info.data)

    @property
    def cap(self) -> int | AutoBounds:
        """The fixed cap, or the bounds of the "auto" one."""
        if self.max_concurrency != AUTO:
            return int(self.max_concurrency)
        return AutoBounds.of(self.auto_min_concurrency, self.auto_max_concurrency)

    @field_validator("urls")
    @classmethod
    def _replicas(
        cls, urls: tuple[str, ...] | None, info: ValidationInfo
    ) -> tuple[str, ...] | None:
        if urls is None:
            return None
        if info.data.get("url") is not None:
            raise ValueError("give 'url' (one server) or 'urls' (a pool), not both")
        return check_replica_urls(urls)

    @model_validator(mode="after")
    def _where(self) -> EndpointSpec:
        if self.urls is not None:
            self._check_pool()
            return self
        if self.affinity != "off":
            raise ValueError("'affinity' is for a pool: give 'urls'")
        if self.url is None and self.endpoint_id is None:
            raise ValueError("give 'url', 'urls' or 'endpoint_id'")
        if self.kind in ("textgen", "llamacpp") and self.url is None:
            raise ValueError(f"a {self.kind} endpoint needs 'url'")
        if self.name in self.fallbacks:
            raise ValueError("an endpoint cannot fall back to itself")
        if self.runpod_pod_id is not None and self.kind == "runpod-serverless":
            raise ValueError("'runpod_pod_id' names a pod; a runpod-serverless endpoint has none")
        if self.idle_stop_after_s is not None and self.runpod_pod_id is None:
            raise ValueError("'idle_stop_after_s' needs 'runpod_pod_id'")
        return self

    def _check_pool(self) -> None:
        if self.kind not in OPENAI_STYLE_KINDS:
            raise ValueError(f"'urls' (a pool) is for the {_kinds()} kinds, not {self.kind}")
        if self.endpoint_id is not None:
            raise ValueError("a pool ('urls') takes no 'endpoint_id'")
        if self.runpod_pod_id is not None:
            raise ValueError("'runpod_pod_id' names one pod; a pool ('urls') has several")
        if self.max_concurrency == AUTO:
            raise ValueError(
                "max_concurrency = \"auto\" is not for a pool ('urls') yet: give its replicas' "
                "cap as a number"
            )
        if self.name in self.fallbacks:
            raise ValueError("an endpoint cannot fall back to itself")

    @property
    def replica_urls(self) -> tuple[str, ...]:
        """The base URLs of a pool's replicas (:func:`endpoint_base`); the one of any other."""
        if self.urls is not None:
            return tuple(endpoint_base(url) for url in self.urls)
        return (self.base_url,)

    @property
    def is_pool(self) -> bool:
        return self.urls is not None

    @property
    def base_url(self) -> str:
        """The URL without a trailing ``/`` (and, but for serverless, without ``/v1`` or
        ``/v1/completions``: :func:`endpoint_base`)."""
        if self.kind == "runpod-serverless":
            return (self.url or f"{RUNPOD_API_BASE}/{self.endpoint_id}").rstrip("/")
        if self.url is not None:
            return endpoint_base(self.url)
        if self.urls is not None:  # a pool: its first replica's (readiness checks, messages)
            return endpoint_base(self.urls[0])
        return f"{RUNPOD_API_BASE}/{self.endpoint_id}/openai"

    @property
    def completions_url(self) -> str:
        """Where this endpoint's generations go (the chat route in chat mode)."""
        return self.url_for(chat=self.chat)

    def url_for(self, *, chat: bool, replica: int = 0) -> str:
        """The completions or chat completions URL, for the OpenAI-style kinds (of a pool's
        replica ``replica``)."""
        path = "chat/completions" if chat else "completions"
        base = self.replica_urls[replica] if self.urls is not None else self.base_url
        return f"{base}/v1/{path}"

    def control_api_key(self) -> str | None:
        """The RunPod account key of the pod's control calls, from its variable."""
        return os.environ.get(self.control_api_key_env) or None

    def api_key(self) -> str | None:
        """The key, read from the environment variable the operator named."""
        if self.api_key_env is None:
            return None
        return os.environ.get(self.api_key_env) or None


def replica_cap(spec: EndpointSpec, replica: int) -> int:
    """The cap of a pool's replica ``replica``: the endpoint's ``max_concurrency``, per replica
    (the one place a cap of its own, or "auto", per replica would be read)."""
    del replica  # every replica has the endpoint's cap today (a number: see _check_pool)
    return int(spec.max_concurrency)


def total_cap(spec: EndpointSpec) -> int:
    """The most calls at once to the endpoint: a pool's replicas' caps together."""
    if not spec.is_pool:
        cap = spec.cap
        return cap if isinstance(cap, int) else cap.high
    return sum(replica_cap(spec, i) for i in range(len(spec.replica_urls)))


def check_replica_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    """A pool's replica URLs as given; a :class:`ValueError` for none, a URL that is not
    ``http(s)://host...``, or one given twice (after :func:`endpoint_base`)."""
    if not urls:
        raise ValueError("a pool needs at least one URL")
    seen: dict[str, int] = {}
    for index, url in enumerate(urls):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Not quoted: a URL may carry a secret in its query or user part.
            raise ValueError(f"urls[{index}] is not an http:// or https:// URL with a host")
        base = endpoint_base(url)
        if base in seen:
            raise ValueError(f"urls[{index}] repeats urls[{seen[base]}]")
        seen[base] = index
    return urls


def _kinds() -> str:
    return ", ".join(sorted(OPENAI_STYLE_KINDS))


class EndpointsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: dict[str, EndpointSpec] = Field(min_length=1)
    #: The endpoint of requests that name none (the first one when unset).
    default: str | None = None


class Endpoints:
    """The configured endpoints, by name, with the default one."""

    def __init__(self, specs: dict[str, EndpointSpec], default: str) -> None:
        self.specs = specs
        self.default = default

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def get(self, name: str | None) -> EndpointSpec:
        return self.specs[name or self.default]

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def chain(self, name: str | None) -> list[str]:
        """``name`` and its fallbacks, in order, each once."""
        order: list[str] = []
        pending = [name or self.default]
        while pending:
            current = pending.pop(0)
            if current not in order:
                order.append(current)
                pending.extend(self.specs[current].fallbacks)
        return order


def load_endpoints(settings: Settings) -> Endpoints | None:
    """The endpoints of the endpoints file and ``RUNPOD_ENDPOINT_URL``; ``None`` if none."""
    specs: dict[str, EndpointSpec] = {}
    default = None
    if settings.endpoints_file is not None:
        parsed = _parse_file(settings.endpoints_file)
        specs = dict(parsed.endpoints)
        default = parsed.default
    if settings.runpod_endpoint_url is not None and DEFAULT_ENDPOINT not in specs:
        specs[DEFAULT_ENDPOINT] = _default_spec(settings, settings.runpod_endpoint_url)
    if not specs:
        return None
    default = default or (DEFAULT_ENDPOINT if DEFAULT_ENDPOINT in specs else next(iter(specs)))
    _check_references(specs, default, settings.endpoints_file)
    return Endpoints(specs, default)


def _default_spec(settings: Settings, url: str) -> EndpointSpec:
    """The endpoint of ``RUNPOD_ENDPOINT_URL``; a :class:`SettingsError` naming the variable
    at fault (a bound of its "auto" limit without ``RUNPOD_MAX_CONCURRENCY=auto``)."""
    bounds = {
        name: value
        for name in ("auto_min_concurrency", "auto_max_concurrency")
        if (value := getattr(settings, name)) is not None
    }
    try:
        return EndpointSpec(
            name=DEFAULT_ENDPOINT,
            url=url,
            api_key_env=env_name("runpod_api_key"),
            model=settings.endpoint_model,
            max_concurrency=settings.runpod_max_concurrency,
            **bounds,
            requests_per_minute=settings.endpoint_requests_per_minute,
            tokens_per_minute=settings.endpoint_tokens_per_minute,
            connect_timeout_s=settings.endpoint_connect_timeout_s,
            read_timeout_s=settings.endpoint_read_timeout_s,
            fairness=settings.fairness,
        )
    except ValidationError as err:
        problems = [
            f"{_variable(str(p['loc'][0]) if p['loc'] else '')}: {p['msg']}"
            for p in err.errors(include_input=False, include_url=False)
        ]
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems)) from None


#: The setting behind each field of the default endpoint that is not named alike.
_SETTING_OF = {"max_concurrency": "runpod_max_concurrency", "url": "runpod_endpoint_url"}


def _variable(field: str) -> str:
    """The environment variable behind ``field`` of the default endpoint."""
    setting = _SETTING_OF.get(field, field)
    return env_name(setting) if setting in Settings.model_fields else (field or "settings")


def require_endpoints(settings: Settings) -> Endpoints:
    """The endpoints, or a :class:`SettingsError` saying how to configure one."""
    endpoints = load_endpoints(settings)
    if endpoints is None:
        raise SettingsError(
            f"no endpoint: set {env_name('runpod_endpoint_url')} or {env_name('endpoints_file')}"
        )
    return endpoints


def _parse_file(path: Path) -> EndpointsFile:
    parsed, _ = read_named_tables(path, "endpoints", EndpointsFile, env_name("endpoints_file"))
    return parsed


def _check_references(specs: dict[str, EndpointSpec], default: str, path: Path | None) -> None:
    origin = str(path) if path else env_name("endpoints_file")
    if default not in specs:
        raise SettingsError(f"{origin}: default endpoint {default!r} is not defined")
    for spec in specs.values():
        for fallback in spec.fallbacks:
            if fallback not in specs:
                raise SettingsError(
                    f"{origin}: endpoints.{spec.name}.fallbacks names {fallback!r}, "
                    "which is not defined"
                )
