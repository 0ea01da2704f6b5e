"""The security suite reuses the API fixtures: a real API served by uvicorn on loopback."""

from __future__ import annotations

from tests.integration.api.conftest import (
    API_KEY,
    ServedApi,
    api,
    api_factory,
    auth,
    queued_messages,
    serve_api,
)

__all__ = ["API_KEY", "ServedApi", "api", "api_factory", "auth", "queued_messages", "serve_api"]
