"""genqueue's settings: one typed object, read from the environment and a ``.env`` file.

The contract's variables keep their names (``REDIS_URL``, ``RUNPOD_*``, ``GENQUEUE_API_KEYS``);
every other setting is ``GENQUEUE_<FIELD NAME>``. Build one object per process with
:func:`worker.config.settings_loading.load_settings` and pass it explicitly; tests build
``Settings(field=value)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.redis_io import redis_sentinel
from worker.webhooks.url_check import WebhookRefused, check_allowlist_entry

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Why a unix:// URL is refused: Celery's Redis transport and result backend know no unix://.
_NO_SOCKET = "a unix socket is not supported (Celery's Redis transport has no unix://)"
#: RunPod's pod proxy answers 524 to any request still open after 100 s.
POD_PROXY_TIMEOUT_S = 100.0

WorkerPool = Literal["gevent", "threads", "prefork", "solo"]
#: How an endpoint's tenants share it: by tasks, or by tokens (docs/scheduling.md).
Fairness = Literal["tasks", "tokens"]


#: Seconds in a day: usage is counted and kept by UTC day.
DAY_S = 86_400

#: How many visibility timeouts a task's record outlives at least (the lost-message sweep sends
#: a task again after two, from its record: see worker.delivery.lost_message_sweep).
LOST_MESSAGE_MARGIN = 4


class Settings(BaseSettings):
    """Every setting genqueue reads. Field docs are the settings table of docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix="GENQUEUE_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    # --- the contract's variables ---------------------------------------------------------
    # repr=False: the URL may hold the Redis password.
    redis_url: str = Field(default=DEFAULT_REDIS_URL, validation_alias="REDIS_URL", repr=False)
    runpod_endpoint_url: str | None = Field(default=None, validation_alias="RUNPOD_ENDPOINT_URL")
    runpod_api_key: SecretStr | None = Field(default=None, validation_alias="RUNPOD_API_KEY")
    runpod_max_concurrency: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] = Field(
        default=1, validation_alias="RUNPOD_MAX_CONCURRENCY"
    )
    #: The bounds of ``RUNPOD_MAX_CONCURRENCY=auto`` (unset: 1 and 64; worker.limits.auto_limit).
    auto_min_concurrency: int | None = None
    auto_max_concurrency: int | None = None
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), validation_alias="GENQUEUE_API_KEYS"
    )
    #: The key the ``genqueue`` commands send to the API (else the one in ``.genqueue/env``).
    api_key: SecretStr | None = Field(default=None, validation_alias="GENQUEUE_API_KEY")
    #: The API the ``genqueue`` commands call (``genqueue up`` writes it to ``.genqueue/env``).
    api_url: str = Field(default="http://127.0.0.1:8000", pattern=r"^https?://")

    #: A Redis of its own for Celery's task results (``celery-task-meta-*`` and their
    #: channels); unset: the results live in ``REDIS_URL``'s Redis (docs/redis.md).
    result_redis_url: str | None = Field(default=None, repr=False)

    # --- TLS to Redis (``rediss://``; the server's certificate and host name are verified) ---
    #: CA certificates (PEM) that Redis's certificate must chain to; unset: the system's.
    redis_ca_file: FilePath | None = None
    #: A client certificate (PEM), for a Redis that asks for one; its key in the same file or in
    #: ``redis_key_file``.
    redis_cert_file: FilePath | None = None
    redis_key_file: FilePath | None = None

    # --- Redis Sentinel (``REDIS_URL=sentinel://host:26379;sentinel://host2:26379/0``) -------
    #: The name the sentinels know the primary by.
    redis_sentinel_master: str = Field(default="mymaster", min_length=1)
    #: The sentinels' own password (``requirepass`` of the sentinels); Redis's is in the URL.
    redis_sentinel_password: SecretStr | None = None
    #: Speak TLS to the sentinels and to Redis, verified as for ``rediss://``.
    redis_sentinel_tls: bool = False
    #: Replicas a submission must reach (Redis's ``WAIT``) before the API answers 202, so that a
    #: failover does not lose an accepted task; unset: 1 with a Sentinel ``REDIS_URL``, else 0.
    redis_submit_replicas: int | None = Field(default=None, ge=0, le=16)
    #: The longest a submission waits for them; past it the task is accepted anyway (it is on
    #: the primary) and the shortfall is logged.
    redis_submit_wait_ms: int = Field(default=1000, ge=1, le=60_000)

    # --- the endpoint call ----------------------------------------------------------------
    #: A TOML file of named endpoints (docs/endpoints.md); RUNPOD_ENDPOINT_URL adds ``default``.
    endpoints_file: Path | None = None
    #: Sent as ``model`` in every completion request when set.
    endpoint_model: str | None = None
    #: Shared limits of the endpoint of RUNPOD_ENDPOINT_URL, per minute (0: no limit).
    endpoint_requests_per_minute: int = Field(default=0, ge=0)
    endpoint_tokens_per_minute: int = Field(default=0, ge=0)
    endpoint_connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: Below the pod proxy's 100 s, so genqueue gives up (and retries) before the proxy does.
    endpoint_read_timeout_s: float = Field(default=95.0, gt=0, lt=POD_PROXY_TIMEOUT_S)
    #: The most of one answer a worker reads (decompressed); a completion's own cap follows its
    #: ``max_tokens`` below this (see worker.endpoints.answers). A larger answer is
    # ``invalid_response``.
    endpoint_max_response_bytes: int = Field(default=16 * 1_048_576, ge=65_536, le=1_073_741_824)

    #: RunPod's REST API, for the pods of endpoints that name a ``runpod_pod_id``.
    runpod_rest_api_url: str = Field(
        default="https://rest.runpod.io/v1",
        pattern=r"^https?://",
        validation_alias="RUNPOD_REST_API_URL",
    )
    #: How often each worker looks at its endpoints' pods for an idle one to stop.
    pod_check_interval_s: float = Field(default=5.0, gt=0, le=3_600)

    # --- retries --------------------------------------------------------------------------
    retry_max_attempts: int = Field(default=5, ge=1, le=100)
    retry_base_delay_s: float = Field(default=1.0, gt=0, le=600)
    retry_max_delay_s: float = Field(default=30.0, gt=0, le=600)
    #: A server's ``Retry-After`` is honoured up to this many seconds.
    retry_after_max_s: float = Field(default=120.0, ge=0, le=600)
    #: A task stops retrying once this long has passed since its first attempt.
    task_deadline_s: float = Field(default=900.0, gt=0, le=86_400)

    # --- delivery guarantees and flow control ---------------------------------------------
    #: Seconds an unacknowledged message stays with a worker that stopped renewing it; a live
    #: worker renews its messages every ``heartbeat_interval_s``.
    visibility_timeout_s: int = Field(default=30, ge=5, le=86_400)
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=600)
    #: Deliveries of one message (a worker died each time) before it is dead-lettered.
    max_deliveries: int = Field(default=3, ge=1, le=100)
    dead_letter_max: int = Field(default=10_000, ge=1, le=1_000_000)
    #: How long an endpoint slot's lease outlives a worker process that stopped renewing it
    #: (its process renews it every third of this; a process seen alive but stalled for
    #: half of it has its leases renewed on its behalf: docs/scheduling.md).
    slot_lease_ttl_s: float = Field(default=30.0, ge=3, le=3_600)
    #: Consecutive retryable endpoint failures that open the circuit breaker.
    breaker_failure_threshold: int = Field(default=5, ge=1, le=10_000)
    #: How long an open breaker first holds tasks back before one probe may try; each failed
    #: probe makes the next wait 1.5 times longer, up to ``breaker_cooldown_max_s``.
    breaker_cooldown_s: float = Field(default=1.0, gt=0, le=3_600)
    breaker_cooldown_max_s: float = Field(default=5.0, gt=0, le=3_600)
    #: Every how many endpoint slots one goes to the priority band of the task that has waited
    #: longest, so low priorities progress under a steady stream of high ones (0: strict
    #: priority). See docs/scheduling.md.
    oldest_band_every: int = Field(default=10, ge=0, le=1_000_000)
    #: How the default endpoint (``RUNPOD_ENDPOINT_URL``) shares its slots among tenants:
    #: ``tasks`` (a turn is a task) or ``tokens`` (a turn costs its tokens, as the Virtual Token
    #: Counter). An endpoint of the endpoints file says it with ``fairness``. See
    #: docs/scheduling.md.
    fairness: Fairness = "tasks"
    #: ``max_tokens`` sent when a request gives none (servers' own defaults differ).
    default_max_tokens: int = Field(default=512, ge=1, le=32_768)
    #: How long a task's Redis round trip (start, slot, end, retry) is retried while Redis is
    #: unreachable before the task gives up; a finished result is kept in memory meanwhile.
    redis_outage_s: float = Field(default=120.0, ge=0, le=86_400)

    # --- results and records ---------------------------------------------------------------
    result_ttl_s: int = Field(default=86_400, ge=60, le=30 * 86_400)
    idempotency_ttl_s: int = Field(default=86_400, ge=60, le=30 * 86_400)

    # --- the worker -----------------------------------------------------------------------
    worker_pool: WorkerPool = "gevent"
    #: In-flight tasks per worker process (greenlets on gevent).
    worker_concurrency: int = Field(default=500, ge=1, le=10_000)
    #: Worker processes that ``genqueue worker`` starts; 0 means one per CPU core.
    worker_processes: int = Field(default=0, ge=0, le=256)
    #: A directory of ``NAME.j2`` Jinja2 files, each a prompt template named NAME.
    templates_dir: Path | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- the HTTP API ---------------------------------------------------------------------
    #: Processes of ``genqueue api``; 0 means one per CPU core.
    api_processes: int = Field(default=0, ge=0, le=64)
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    api_batch_max: int = Field(default=100, ge=1, le=10_000)
    api_wait_max_s: float = Field(default=60.0, ge=0, le=600)
    #: ``?wait=`` requests one API process holds at once; more are answered 429 at once.
    api_max_waiters: int = Field(default=4096, ge=1, le=1_000_000)
    #: ``GET /v1/tasks/{id}/stream`` follows one API process serves at once (each holds a
    #: Redis connection of its own while it waits for tokens); more are answered 429.
    api_max_streams: int = Field(default=512, ge=1, le=100_000)
    #: The longest the API waits on Redis for one reply or a free connection; a Redis that
    #: hangs is answered 503 within twice this plus a second. Above the token follows' 1 s
    #: blocking read.
    api_redis_timeout_s: float = Field(default=2.0, ge=1.5, le=60)
    #: How long ``POST /v1/completions`` and ``/v1/chat/completions`` (without ``stream``) wait
    #: for their task; then 504, and the task carries on.
    api_openai_wait_s: float = Field(default=300.0, gt=0, le=3600)
    #: Serve beyond loopback without GENQUEUE_API_KEYS (anyone who reaches the port may submit).
    api_insecure_no_auth: bool = False
    #: Accepted keys given as SHA-256 hex digests, so the plain keys are not stored anywhere.
    api_key_hashes: Annotated[tuple[str, ...], NoDecode] = ()
    #: Submissions per minute per API key (0: no limit); over it, 429 with Retry-After.
    api_rate_limit_per_minute: int = Field(default=0, ge=0, le=1_000_000)
    #: A TOML file of named tenants (keys, weight, limits, webhook secret):
    #: worker/tenancy/tenants.py.
    tenants_file: Path | None = Field(default=None, validation_alias="GENQUEUE_TENANTS_FILE")
    #: Days of per-tenant usage (tasks, tokens, GPU-seconds) kept, by UTC day.
    usage_retention_days: int = Field(default=90, ge=1, le=3_660)
    #: A data directory for ``genqueue up`` (the embedded Redis keeps its files there).
    data_dir: Path = Path(".genqueue")

    # --- batches ------------------------------------------------------------------------
    #: Requests in one ``POST /v1/batches``.
    batch_max_requests: int = Field(default=50_000, ge=1, le=1_000_000)
    #: Body limit of ``POST /v1/batches`` (other routes keep ``api_max_body_bytes``).
    batch_max_body_bytes: int = Field(default=64 * 1_048_576, ge=1024, le=1024 * 1_048_576)
    #: Priority of a batch line that sets none: below the interactive default (5), 9 first.
    batch_default_priority: int = Field(default=2, ge=0, le=9)
    #: Batch uploads one API process reads at once; more are answered 503 with Retry-After.
    batch_max_concurrent_uploads: int = Field(default=2, ge=1, le=1024)

    # --- observability --------------------------------------------------------------------
    #: Prometheus metrics of each worker process: process i serves on this port + i (0: off).
    worker_metrics_port: int = Field(default=0, ge=0, le=65_535)
    worker_metrics_host: str = "127.0.0.1"
    #: ``json``: every task log line (logger ``genqueue.task``) is one JSON object.
    log_format: Literal["text", "json"] = "text"
    #: Put prompts and outputs in task log lines. Debugging only: they may hold personal data.
    log_prompts: bool = False
    #: The completion stream ``genqueue:events`` is trimmed to about this many entries.
    events_maxlen: int = Field(default=100_000, ge=1, le=100_000_000)
    #: Signs webhook bodies (HMAC-SHA256); without it requests with ``webhook_url`` are refused.
    webhook_secret: SecretStr | None = None
    #: Host names or URL prefixes webhooks may go to; when set, nothing else is allowed.
    webhook_allowlist: Annotated[tuple[str, ...], NoDecode] = ()
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: A webhook is retried (with backoff) for this long after the task ended, then given up.
    webhook_retry_for_s: float = Field(default=3_600.0, ge=0, le=7 * 86_400)
    webhook_retry_max_delay_s: float = Field(default=300.0, gt=0, le=3_600)

    @property
    def usage_ttl_s(self) -> int:
        """How long a tenant's usage of one day is kept, in seconds."""
        return self.usage_retention_days * DAY_S

    @property
    def submit_replicas(self) -> int:
        """The replicas a submission waits for (``redis_submit_replicas``, or its default)."""
        if self.redis_submit_replicas is not None:
            return self.redis_submit_replicas
        return 1 if redis_sentinel.is_sentinel(self.redis_url) else 0

    @field_validator("api_keys", "api_key_hashes", "webhook_allowlist", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("webhook_allowlist")
    @classmethod
    def _check_allowlist(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for number, entry in enumerate(value, start=1):
            try:
                check_allowlist_entry(entry)
            except WebhookRefused as err:  # the entry is not repeated: a URL may hold a token
                raise ValueError(f"entry {number}: {err}") from None
        return value

    @field_validator("runpod_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if redis_sentinel.is_sentinel(value):
            redis_sentinel.parse(value)  # its ValueError never quotes the URL
            return value
        if value.startswith("unix://"):
            raise ValueError(_NO_SOCKET)
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis://, rediss:// or sentinel://")
        return value

    @field_validator("result_redis_url")
    @classmethod
    def _check_result_redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if redis_sentinel.is_sentinel(value):
            raise ValueError(
                "a result Redis behind Sentinel is not supported: give its primary as "
                "redis:// or rediss://, or leave it unset to keep the results in REDIS_URL"
            )
        if value.startswith("unix://"):
            raise ValueError(_NO_SOCKET)
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must start with redis:// or rediss://")
        return value

    @property
    def results_apart(self) -> bool:
        """Whether Celery's results live in a Redis of their own (``result_redis_url``)."""
        return self.result_redis_url is not None and self.result_redis_url != self.redis_url

    @property
    def results_url(self) -> str:
        """The URL of the Redis holding Celery's results."""
        return self.result_redis_url or self.redis_url

    @model_validator(mode="after")
    def _check_redis_tls(self) -> Settings:
        if self.redis_key_file is not None and self.redis_cert_file is None:
            raise ValueError("GENQUEUE_REDIS_KEY_FILE needs GENQUEUE_REDIS_CERT_FILE")
        return self

    @model_validator(mode="after")
    def _check_breaker(self) -> Settings:
        if self.breaker_cooldown_s > self.breaker_cooldown_max_s:
            raise ValueError(
                "GENQUEUE_BREAKER_COOLDOWN_S must not exceed GENQUEUE_BREAKER_COOLDOWN_MAX_S"
            )
        return self

    @model_validator(mode="after")
    def _check_retry_policy(self) -> Settings:
        if self.retry_base_delay_s > self.retry_max_delay_s:
            raise ValueError(
                "GENQUEUE_RETRY_BASE_DELAY_S must not exceed GENQUEUE_RETRY_MAX_DELAY_S"
            )
        return self

    @property
    def completions_url(self) -> str | None:
        """``{base}/v1/completions`` (:func:`endpoint_base` says what the base may end with)."""
        if self.runpod_endpoint_url is None:
            return None
        return f"{endpoint_base(self.runpod_endpoint_url)}/v1/completions"

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        if self.heartbeat_interval_s * 2 > self.visibility_timeout_s:
            raise ValueError(
                "GENQUEUE_HEARTBEAT_INTERVAL_S must be at most half of "
                "GENQUEUE_VISIBILITY_TIMEOUT_S, or live messages would be redelivered"
            )
        if self.result_ttl_s < self.visibility_timeout_s * LOST_MESSAGE_MARGIN:
            raise ValueError(
                f"GENQUEUE_RESULT_TTL_S must be at least {LOST_MESSAGE_MARGIN} x "
                "GENQUEUE_VISIBILITY_TIMEOUT_S: a task whose message was lost is sent again "
                "after twice the visibility timeout, from its record, which must still be there"
            )
        return self


#: What an endpoint's URL may end with beyond its base (users copy the full completions URL).
_ROUTE_SUFFIXES = ("/v1/chat/completions", "/v1/completions", "/v1")


def endpoint_base(url: str) -> str:
    """An OpenAI-style endpoint's base URL: without a trailing ``/``, ``/v1``,
    ``/v1/completions`` or ``/v1/chat/completions`` (genqueue adds the route it calls)."""
    base = url.strip().rstrip("/")
    for suffix in _ROUTE_SUFFIXES:
        if base.endswith(suffix):
            return base.removesuffix(suffix)
    return base


def default_of(field: str) -> Any:
    """The default of setting ``field``: what a policy built without settings (a test's, or a
    tool's) takes, so that each default is written here only."""
    return Settings.model_fields[field].default


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, str):
        return alias
    return f"GENQUEUE_{field.upper()}"
