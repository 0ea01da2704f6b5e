"""``GET /metrics``: Prometheus text, without a key (like ``/healthz``).

The API's own counter (tasks it accepted) and, read from Redis at each scrape in one pipeline,
the state every process shares: queue depth, each endpoint's calls in flight against its
``max_concurrency`` and its circuit breaker, and the dead-letter list. Each tenant's usage
(tokens, GPU-seconds) is one tenant's business: it is served only to a scrape that sends an
admin tenant's key (``Authorization: Bearer``; a key that matches none is 401), or to any scrape
when the API has no keys at all. The workers' own metrics are served by each worker process
(``GENQUEUE_WORKER_METRICS_PORT``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response, status
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from api_producer.deps import ApiState, StateDep
from worker import keys
from worker.endpoints.config import load_endpoints
from worker.observability.scaling import EndpointSignals, SignalsRead, scaling_families
from worker.observability.snapshot import EndpointState, Snapshot, endpoint_caps
from worker.redis_io import connections
from worker.settings import Settings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BREAKER_STATES = ("closed", "open", "half_open")


class ApiMetrics:
    """The API process's own metrics, on a registry of its own (one per app)."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter(
            "genqueue_api_tasks_submitted",
            "Tasks this API process accepted (replayed idempotent submissions excluded).",
            registry=self.registry,
        )
        #: The endpoints whose leases and breakers a scrape reads (none configured: none).
        self.endpoints = load_endpoints(settings)
        self.caps = endpoint_caps(self.endpoints)
        self.redis = connections.api_async_client(settings, max_connections=8)

    async def aclose(self) -> None:
        await self.redis.aclose()


# A coroutine, though it never waits: FastAPI runs a plain ``def`` dependency in a thread.
async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.genqueue_metrics
    return metrics


MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]

router = APIRouter(tags=["health"])


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def snapshot_families(snapshot: Snapshot) -> list[Metric]:
    """The shared state as Prometheus gauges, one series per endpoint."""
    families: list[Metric] = [
        _gauge("genqueue_redis_up", "1 when Redis answered this scrape.", 1),
        _gauge(
            "genqueue_queue_depth",
            "Messages waiting in the queues the workers consume, all priorities.",
            snapshot.queue_depth,
        ),
        _gauge("genqueue_dead_letters", "Tasks in the dead-letter list.", snapshot.dead_letters),
        _gauge(
            "genqueue_unreadable_messages",
            "Queue messages that were not kombu messages, set aside in genqueue:unreadable.",
            snapshot.unreadable,
        ),
    ]
    if snapshot.endpoints:
        families += _endpoint_families(snapshot.endpoints)
    return families


def _endpoint_families(endpoints: tuple[EndpointState, ...]) -> list[Metric]:
    in_flight = GaugeMetricFamily(
        "genqueue_endpoint_in_flight",
        "Endpoint calls in flight across all workers.",
        labels=["endpoint"],
    )
    cap = GaugeMetricFamily(
        "genqueue_endpoint_max_concurrency",
        "The endpoint's max_concurrency (RUNPOD_MAX_CONCURRENCY): the most calls at once "
        '(for "auto", auto_max_concurrency).',
        labels=["endpoint"],
    )
    limit = GaugeMetricFamily(
        "genqueue_endpoint_concurrency_limit",
        'The limit in force: max_concurrency, or for "auto" the one found from latency.',
        labels=["endpoint"],
    )
    failures = GaugeMetricFamily(
        "genqueue_breaker_consecutive_failures",
        "Consecutive retryable failures counted by the circuit breaker.",
        labels=["endpoint"],
    )
    state = GaugeMetricFamily(
        "genqueue_breaker_state",
        "The endpoint's circuit breaker: 1 for its current state.",
        labels=["endpoint", "state"],
    )
    replica_in_flight = GaugeMetricFamily(
        "genqueue_replica_in_flight",
        "A pool's calls in flight on each replica (replica: its place in urls, from 0).",
        labels=["endpoint", "replica"],
    )
    replica_state = GaugeMetricFamily(
        "genqueue_replica_breaker_state",
        "Each pool replica's circuit breaker: 1 for its current state.",
        labels=["endpoint", "replica", "state"],
    )
    for endpoint in endpoints:
        if endpoint.pool is not None:
            where = [endpoint.pool, str(endpoint.replica)]
            replica_in_flight.add_metric(where, endpoint.in_flight)
            for breaker in BREAKER_STATES:
                is_state = float(endpoint.breaker_state == breaker)
                replica_state.add_metric([*where, breaker], is_state)
            continue
        name = endpoint.endpoint_id
        in_flight.add_metric([name], endpoint.in_flight)
        cap.add_metric([name], endpoint.max_concurrency)
        limit.add_metric([name], endpoint.limit)
        failures.add_metric([name], endpoint.breaker_failures)
        for breaker in BREAKER_STATES:
            state.add_metric([name, breaker], float(endpoint.breaker_state == breaker))
    return [in_flight, cap, limit, failures, state, replica_in_flight, replica_state]


def tenant_families(totals: dict[bytes, bytes], label_of: Callable[[str], str]) -> list[Metric]:
    """Each tenant's tokens and GPU-seconds since counting began, by endpoint.

    Only tenants named in the tenants file get their own ``tenant`` label; every other one
    (a plain key's, a Celery producer's) is summed under ``other``, so label values stay few.
    """
    tokens: dict[tuple[str, str, str], float] = {}
    gpu: dict[tuple[str, str], float] = {}
    for raw_field, raw_value in totals.items():
        tenant, _, rest = raw_field.decode().partition("|")
        endpoint, _, kind = rest.partition("|")
        label = label_of(tenant)
        if kind == "gpu_ms":
            gpu[(label, endpoint)] = gpu.get((label, endpoint), 0.0) + int(raw_value) / 1000
        else:
            at = (label, endpoint, kind)
            tokens[at] = tokens.get(at, 0.0) + int(raw_value)
    token_family = CounterMetricFamily(
        "genqueue_tenant_tokens",
        "Tokens of finished tasks as the endpoint counted them, by tenant, endpoint and kind.",
        labels=["tenant", "endpoint", "kind"],
    )
    for labels, value in sorted(tokens.items()):
        token_family.add_metric(list(labels), value)
    gpu_family = CounterMetricFamily(
        "genqueue_tenant_gpu_seconds",
        "Durations of the endpoint calls that gave finished tasks' results, by tenant.",
        labels=["tenant", "endpoint"],
    )
    for pair, value in sorted(gpu.items()):
        gpu_family.add_metric(list(pair), value)
    return [token_family, gpu_family]


async def _signals(own: ApiMetrics) -> list[EndpointSignals]:
    read = SignalsRead(own.endpoints)
    pipe = own.redis.pipeline(transaction=False)
    read.commands(pipe)
    read.dated(await pipe.execute())
    pipe = own.redis.pipeline(transaction=False)
    read.date_commands(pipe)
    return read.signals(await pipe.execute())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(
    own: MetricsDep,
    state: StateDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Prometheus metrics of the API and of the shared state in Redis; each tenant's usage
    too for an admin's key."""
    with_tenants = _admin(state, authorization)
    families = list(own.registry.collect())
    try:
        pipe = own.redis.pipeline(transaction=False)
        Snapshot.commands(pipe, own.caps)
        if with_tenants:
            pipe.hgetall(keys.usage_totals())
        results = await pipe.execute()
        totals = results.pop() if with_tenants else None
        families += snapshot_families(Snapshot.parse(results, own.caps))
        if totals is not None:
            families += tenant_families(totals, state.keys.tenants.label_of)
        families += scaling_families(await _signals(own))
    except (RedisError, OSError):
        families.append(_gauge("genqueue_redis_up", "1 when Redis answered this scrape.", 0))
    return Response(generate_latest(_Families(families)), media_type=CONTENT_TYPE)


def _admin(state: ApiState, authorization: str | None) -> bool:
    """Whether the scrape may see each tenant's usage; 401 for a key that matches none."""
    if authorization is None:
        return not state.keys.enabled  # no keys at all: the one caller is the operator
    caller = state.keys.caller(authorization)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid API key: /metrics needs no key, or an admin tenant's key for "
            "each tenant's usage",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return state.keys.tenant(caller).admin
