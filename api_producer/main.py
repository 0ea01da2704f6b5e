"""The HTTP API app: :func:`create_app` only assembles it."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api_producer.auth import KeyChecker
from api_producer.batches import BatchStore
from api_producer.body_limit import BodySizeLimit
from api_producer.deps import ApiState
from api_producer.openai_errors import unknown_path
from api_producer.producers.async_direct import AsyncProducer
from api_producer.producers.direct import (
    DirectProducer,
    EnqueueError,
    describe_redis_error,
    make_plan,
)
from api_producer.quota import QuotaExceeded, TokenBudget
from api_producer.rate_limit import RateLimiter
from api_producer.routes import (
    batches,
    docs,
    health,
    metrics,
    openai,
    openai_models,
    stream,
    tasks,
    usage,
)
from api_producer.store import TaskStore
from api_producer.task_redis import TaskRedis
from api_producer.token_follow import TokenFollower
from api_producer.uploads import UploadSlots
from api_producer.usage import UsageReader, prices_of
from api_producer.waiters import ResultListener
from worker.config.settings_loading import load_settings
from worker.delivery import backlog
from worker.endpoints.config import DEFAULT_ENDPOINT, load_endpoints
from worker.errors import TemplateError
from worker.pipeline.render import PromptRenderer
from worker.redis_io import connections
from worker.settings import Settings
from worker.tenancy.tenants import TenantsSource, no_key_error


def _templates(settings: Settings) -> frozenset[str] | None:
    try:
        return frozenset(PromptRenderer(settings.templates_dir).names)
    except TemplateError:
        return None  # the directory lives on the workers only: let them judge


def listener(settings: Settings) -> ResultListener:
    """The process's one pub/sub connection for ``?wait=`` (a client of its own)."""
    client = connections.api_async_client(settings, max_connections=2, results=True)
    return ResultListener(client, settings.api_max_waiters)


def build_state(settings: Settings) -> ApiState:
    sync_client = connections.api_sync_client(settings, max_connections=256)
    async_client = connections.api_async_client(settings, max_connections=1024)
    plan = make_plan(settings, sync_client)
    endpoints = load_endpoints(settings)  # an invalid file stops the API at start
    tenants = TenantsSource(settings)  # an invalid tenants file stops it too
    tasks = TaskRedis.from_settings(settings, async_client, 1024)
    # A queued task's place counts the tasks of its endpoint's queue, by its tenants' weights.
    tasks.default_endpoint = endpoints.default if endpoints is not None else DEFAULT_ENDPOINT
    weights = backlog.tenants_file_weights(tenants)
    tasks.weights = lambda: backlog.weights_spec(weights)
    store = TaskStore(tasks, listener(settings))
    # A blocked XREAD holds its connection: the follows have a client of their own.
    follows_client = connections.api_async_client(
        settings, max_connections=settings.api_max_streams
    )
    return ApiState(
        settings=settings,
        producer=DirectProducer(settings, sync_client, plan),
        enqueuer=AsyncProducer(settings, async_client, plan),
        store=store,
        tokens=TokenFollower(follows_client, store, settings.api_max_streams),
        keys=KeyChecker(tenants),
        templates=_templates(settings),
        endpoints=frozenset(endpoints.names) if endpoints is not None else None,
        endpoint_specs=endpoints,
        budget=(
            TokenBudget(async_client, settings.default_max_tokens)
            if settings.tenants_file is not None
            else None
        ),
        models_created_s=openai_models.configured_at(settings),
    )


#: The collector's thresholds once the app is built: a young collection per 50,000 new
#: container objects instead of 700, and older generations collected less often.
GC_THRESHOLDS = (50_000, 50, 100)


def settle_heap() -> None:
    """Freeze what the app built at start and make collections rarer.

    Every object alive now (modules, Celery, FastAPI, pydantic schemas: about 90,000) moves
    out of the collector's reach, so a full collection no longer walks them all; each walk
    took 15 ms or more, held the event loop, and set the API's p99 under load. Called by
    ``genqueue api`` once per process, not by :func:`create_app` (tests build many apps).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def app_from_environment(require_keys: bool = False) -> FastAPI:
    """The app for settings read from the environment (each ``genqueue api`` process)."""
    app = create_app(load_settings(), require_keys=require_keys)
    settle_heap()
    return app


def keyed_app_from_environment() -> FastAPI:
    """:func:`app_from_environment` that refuses to start without a key (a public host)."""
    return app_from_environment(require_keys=True)


def create_app(settings: Settings, require_keys: bool = False) -> FastAPI:
    """The API for ``settings``; Redis connections open on first use.

    :param require_keys: refuse to start without a key (:class:`SettingsError`), as on a
        public host; a reload of the tenants file never drops every key either.
    """
    state = build_state(settings)
    if require_keys and not state.keys.enabled:
        raise no_key_error()
    limiter = RateLimiter.from_settings(settings)
    own_metrics = metrics.ApiMetrics(settings)
    batch_store = BatchStore.from_settings(settings, state.producer)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.producer.close()
        await limiter.aclose()
        await own_metrics.aclose()
        await batch_store.aclose()
        await state.store.aclose()
        await state.tokens.aclose()

    app = FastAPI(
        title="genqueue",
        summary="Enqueue text-generation tasks for GPU-hosted language models.",
        version="0.1.0",
        lifespan=lifespan,
        # Swagger UI from a package (routes/docs.py), not from a CDN; ReDoc has no such package.
        docs_url=None,
        redoc_url=None,
    )
    app.state.genqueue = state
    app.state.rate_limiter = limiter
    app.state.genqueue_metrics = own_metrics
    app.state.genqueue_batches = batch_store
    app.state.genqueue_usage = UsageReader(state.store.client, prices_of(own_metrics.endpoints))
    app.state.genqueue_uploads = UploadSlots(settings.batch_max_concurrent_uploads)
    app.include_router(tasks.router)
    app.include_router(stream.router)
    app.include_router(openai.router)
    app.include_router(openai_models.router)
    app.include_router(batches.router)
    app.include_router(usage.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(docs.router)
    app.mount(docs.ASSETS_PATH, docs.assets(), name="docs-assets")
    app.router.default = unknown_path(app.router.default)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(EnqueueError, _unavailable)
    app.add_exception_handler(QuotaExceeded, _over_quota)
    app.add_exception_handler(redis.RedisError, _unavailable)
    app.add_exception_handler(OSError, _unavailable)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.api_max_body_bytes,
        path_limits={batches.PATH: settings.batch_max_body_bytes},
    )
    return app


async def _unavailable(_: Request, err: Exception) -> JSONResponse:
    reason = str(err) if isinstance(err, EnqueueError) else describe_redis_error(err)
    return JSONResponse({"detail": f"service unavailable: {reason}"}, status_code=503)


async def _over_quota(_: Request, err: Exception) -> JSONResponse:
    retry_after_s = err.retry_after_s if isinstance(err, QuotaExceeded) else 60
    return JSONResponse(
        {"detail": str(err), "type": QuotaExceeded.error_type},
        status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(retry_after_s)},
    )


async def _invalid(_: Request, err: Exception) -> JSONResponse:
    """FastAPI's 422 without the offending input: a 200,000-character prompt is not sent back."""
    errors = err.errors() if isinstance(err, RequestValidationError) else []
    detail = [{k: v for k, v in e.items() if k not in ("input", "url")} for e in errors]
    return JSONResponse(
        {"detail": jsonable_encoder(detail)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )
