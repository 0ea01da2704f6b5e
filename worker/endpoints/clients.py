"""The endpoints a worker process calls: for each, its client and its guard."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis

from worker import keys
from worker.endpoints.completions import CompletionClient, EndpointConfig, endpoint_session
from worker.endpoints.config import EndpointSpec, replica_cap
from worker.endpoints.pods.control import PodControl
from worker.endpoints.pods.gate import Decision, PodGate
from worker.endpoints.pods.idle import IdlePolicy, IdleStop
from worker.endpoints.serverless import ServerlessClient
from worker.errors import EndpointError
from worker.limits.admission import Weights, equal_weights
from worker.limits.guard import EndpointGuard, GuardPolicy
from worker.limits.pool import ReplicaPool
from worker.redis_io.redis_outage import OutagePolicy
from worker.settings import Settings, env_name


@dataclass
class EndpointTarget:
    """One configured endpoint as a worker process calls it."""

    spec: EndpointSpec
    guard: EndpointGuard
    client: CompletionClient | None = None
    serverless: ServerlessClient | None = None
    #: The pod genqueue starts and stops (``runpod_pod_id``), and its idle stop.
    pod: PodGate | None = None
    idle: IdleStop | None = None
    #: A pool's clients, one per replica in the order of its ``urls`` (``client`` is the first).
    replicas: list[CompletionClient] = field(default_factory=list)

    def client_for(self, replica: int | None) -> CompletionClient | None:
        """The client of a pool's replica ``replica``; ``client`` otherwise."""
        if replica is None or not self.replicas:
            return self.client
        return self.replicas[replica]

    def replica_url(self, replica: int | None) -> str:
        """The base URL a call on ``replica`` went to (the endpoint's, not in a pool)."""
        if replica is None or not self.spec.is_pool:
            return self.spec.base_url
        return self.spec.replica_urls[replica]

    def health_ids(self) -> list[str]:
        """The ids whose breakers count the endpoint's successes: its replicas' in a pool."""
        if self.guard.pool is not None:
            return self.guard.pool.replica_ids()
        return [endpoint_id(self.spec.name)]

    def close(self) -> None:
        if self.idle is not None:
            self.idle.close()
        if self.pod is not None:
            self.pod.control.close()
        self.guard.close()
        for client in self.replicas or ([self.client] if self.client is not None else []):
            client.close()


def endpoint_id(name: str) -> str:
    """The id of an endpoint in Redis keys and metrics: its configured name, never its URL."""
    return name


def endpoint_api_key(spec: EndpointSpec, settings: Settings) -> str | None:
    """The key sent to ``spec``: from its ``api_key_env`` (RUNPOD_API_KEY also from .env)."""
    if spec.api_key_env == env_name("runpod_api_key") and settings.runpod_api_key is not None:
        return settings.runpod_api_key.get_secret_value()  # also read from .env
    return spec.api_key()


def _control_key(spec: EndpointSpec, settings: Settings) -> str | None:
    if spec.control_api_key_env == env_name("runpod_api_key") and settings.runpod_api_key:
        return settings.runpod_api_key.get_secret_value()  # also read from .env
    return spec.control_api_key()


def _probe(client: CompletionClient) -> Callable[[], bool]:
    """Whether the completions server generates now: a one-token completion answers 200."""

    def ready() -> bool:
        try:
            client.complete("Hi", {"max_tokens": 1}, PROBE_TIMEOUT_S, None)
        except EndpointError:
            return False
        return True

    return ready


#: The read timeout of a readiness probe.
PROBE_TIMEOUT_S = 10.0


def replica_pool(spec: EndpointSpec, client: redis.Redis, lease_ttl_s: float) -> ReplicaPool | None:
    """The replicas of a pool endpoint (``urls``); ``None`` for one server."""
    if not spec.is_pool:
        return None
    return ReplicaPool(
        client,
        endpoint_id(spec.name),
        len(spec.replica_urls),
        lambda replica: replica_cap(spec, replica),
        int(lease_ttl_s * 1000),
    )


def pod_gate(
    spec: EndpointSpec, settings: Settings, client: redis.Redis, on_decision: Decision
) -> PodGate | None:
    """The gate of ``spec``'s pod (``None`` without ``runpod_pod_id``); its probe is set
    when the endpoint's client is built."""
    if spec.runpod_pod_id is None:
        return None
    control = PodControl(
        settings.runpod_rest_api_url, spec.runpod_pod_id, _control_key(spec, settings)
    )
    return PodGate(
        client, endpoint_id(spec.name), control, lambda: False, spec.pod_ready_timeout_s,
        on_decision,
    )  # fmt: skip


def build_target(
    spec: EndpointSpec,
    settings: Settings,
    client: redis.Redis,
    pool_size: int,
    lease_ttl_s: float,
    weights: Weights = equal_weights,
    on_decision: Decision | None = None,
    queues: Sequence[str] = (),
) -> EndpointTarget:
    """The clients and the guard of ``spec``, for a process with ``pool_size`` slots;
    ``weights`` gives a tenant's share of the endpoint when tasks wait for it;
    ``on_decision`` counts the decisions about its pod, whose idle stop looks at ``queues``
    (those whose tasks come to it)."""
    gate = pod_gate(spec, settings, client, on_decision or (lambda _d, _r: None))
    guard = EndpointGuard(
        client,
        endpoint_id(spec.name),
        GuardPolicy(
            limit=spec.cap,
            lease_ttl_s=lease_ttl_s,
            failure_threshold=settings.breaker_failure_threshold,
            cooldown_s=settings.breaker_cooldown_s,
            cooldown_max_s=settings.breaker_cooldown_max_s,
            oldest_every=settings.oldest_band_every,
            requests_per_minute=spec.requests_per_minute,
            tokens_per_minute=spec.tokens_per_minute,
            outage=OutagePolicy.from_settings(settings),
        ),
        weights=weights,
        gate=gate,
        pool=replica_pool(spec, client, lease_ttl_s),
    )
    target = EndpointTarget(spec=spec, guard=guard, pod=gate)
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
    clients = [
        CompletionClient(
            EndpointConfig(
                completions_url=spec.url_for(chat=False, replica=replica),
                name=spec.name,
                chat_url=spec.url_for(chat=True, replica=replica),
                api_key=api_key,
                model=spec.model,
                connect_timeout_s=spec.connect_timeout_s,
                read_timeout_s=spec.read_timeout_s,
                pool_size=pool_size,
                max_response_bytes=settings.endpoint_max_response_bytes,
            )
        )
        for replica in range(len(spec.replica_urls))
    ]
    target.client = clients[0]
    if spec.is_pool:
        target.replicas = clients
    if gate is not None:
        gate.probe = _probe(target.client)
        target.idle = IdleStop(gate, IdlePolicy(
            spec.idle_stop_after_s, spec.stop_pods_started_by_others,
            settings.pod_check_interval_s,
        ), queues or [keys.queue_for(spec.name)])  # fmt: skip
        target.idle.start()
    return target
