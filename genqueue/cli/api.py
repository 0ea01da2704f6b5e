"""``genqueue api``: the HTTP API under uvicorn."""

from __future__ import annotations

import os
from typing import Any

import uvicorn

from api_producer.main import create_app, settle_heap
from genqueue.cli.api_processes import reuseport_supported, serve_processes
from genqueue.cli.ports import keys_required
from worker.errors import SettingsError
from worker.settings import Settings
from worker.tenancy.tenants import load_tenants


def serve(settings: Settings, host: str, port: int) -> int:
    has_keys = load_tenants(settings).keyed  # an invalid tenants file stops it here

    # Checked here to say it first; and again by each process's app as it starts.
    if not has_keys and keys_required(settings, host):
        raise SettingsError(
            f"refusing to serve on {host} without GENQUEUE_API_KEYS; set keys, or "
            "GENQUEUE_API_INSECURE_NO_AUTH=true to accept anyone who can reach the port"
        )
    processes = settings.api_processes or os.cpu_count() or 1
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "timeout_graceful_shutdown": 5,
    }
    if processes == 1:
        app = create_app(settings, require_keys=keys_required(settings, host))
        settle_heap()
        uvicorn.run(app, **options)
    elif reuseport_supported():
        # One SO_REUSEPORT socket per process: the kernel spreads new connections evenly.
        # Each process builds the app from the same environment (and .env).
        return serve_processes(host, port, processes, options["log_level"])
    else:
        # One socket shared by every process.
        factory = (
            "keyed_app_from_environment"
            if keys_required(settings, host)
            else ("app_from_environment")
        )
        uvicorn.run(f"api_producer.main:{factory}", factory=True, workers=processes, **options)
    return 0
