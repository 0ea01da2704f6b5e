"""The ``genqueue`` commands run as a user runs them: a subprocess in a folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.integration.api.conftest import API_KEY, api, api_factory, auth

__all__ = ["API_KEY", "api", "api_factory", "auth", "clean_env", "genqueue"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without genqueue's variables (and the project on the path)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GENQUEUE_", "RUNPOD_", "REDIS_", "FLOWER_"))
    }
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def genqueue(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "genqueue", *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
