"""Producers: how an accepted task is written to Redis, with or without the HTTP API."""
