"""The endpoints a worker process calls: for each, its client and its guard."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.endpoints.completions import CompletionClient, EndpointConfig, endpoint_session
from worker.endpoints.config import EndpointSpec
from worker.endpoints.serverless import ServerlessClient
from worker.limits.admission import Weights, equal_weights
from worker.limits.guard import EndpointGuard, GuardPolicy
from worker.redis_outage import OutagePolicy
from worker.settings import Settings, env_name


@dataclass
class EndpointTarget:
    """One configured endpoint as a worker process calls it."""

    spec: EndpointSpec
    guard: EndpointGuard
    client: CompletionClient | None = None
    serverless: ServerlessClient | None = None

    def close(self) -> None:
        self.guard.close()
        if self.client is not None:
            self.client.close()


def endpoint_id(name: str) -> str:
    """The id of an endpoint in Redis keys and metrics: its configured name, never its URL."""
    return name


def endpoint_api_key(spec: EndpointSpec, settings: Settings) -> str | None:
    """The key sent to ``spec``: from its ``api_key_env`` (RUNPOD_API_KEY also from .env)."""
    if spec.api_key_env == env_name("runpod_api_key") and settings.runpod_api_key is not None:
        return settings.runpod_api_key.get_secret_value()  # also read from .env
    return spec.api_key()


def build_target(
    spec: EndpointSpec,
    settings: Settings,
    client: redis.Redis,
    pool_size: int,
    lease_ttl_s: float,
    weights: Weights = equal_weights,
) -> EndpointTarget:
    """The clients and the guard of ``spec``, for a process with ``pool_size`` slots;
    ``weights`` gives a tenant's share of the endpoint when tasks wait for it."""
    guard = EndpointGuard(
        client,
        endpoint_id(spec.name),
        GuardPolicy(
            limit=spec.max_concurrency,
            lease_ttl_s=lease_ttl_s,
            failure_threshold=settings.breaker_failure_threshold,
            cooldown_s=settings.breaker_cooldown_s,
            cooldown_max_s=settings.breaker_cooldown_max_s,
            oldest_every=settings.oldest_band_every,
            requests_per_minute=spec.requests_per_minute,
            tokens_per_minute=spec.tokens_per_minute,
            outage=OutagePolicy(budget_s=settings.redis_outage_s),
        ),
        weights=weights,
    )
    target = EndpointTarget(spec=spec, guard=guard)
    api_key = endpoint_api_key(spec, settings)
    timeouts = (spec.connect_timeout_s, spec.read_timeout_s)
    if spec.kind == "runpod-serverless":
        session = endpoint_session(spec.base_url, pool_size)
        target.serverless = ServerlessClient(
            session,
            spec.base_url,
            api_key,
            timeouts,
            name=spec.name,
            max_response_bytes=settings.endpoint_max_response_bytes,
        )
        return target
    target.client = CompletionClient(
        EndpointConfig(
            completions_url=spec.url_for(chat=False),
            name=spec.name,
            chat_url=spec.url_for(chat=True),
            api_key=api_key,
            model=spec.model,
            connect_timeout_s=spec.connect_timeout_s,
            read_timeout_s=spec.read_timeout_s,
            pool_size=pool_size,
            max_response_bytes=settings.endpoint_max_response_bytes,
        )
    )
    return target
