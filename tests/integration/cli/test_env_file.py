"""``.genqueue/env``: lines a POSIX shell and python-dotenv load to the same values, 0600."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dotenv import dotenv_values

from genqueue.cli.env_file import write_env_file

VALUES = {
    "REDIS_URL": "redis://:p4ss-w_rd@127.0.0.1:40211/0",
    "GENQUEUE_API_URL": "http://127.0.0.1:8000",
    "GENQUEUE_API_KEY": "Abc-_123",
    "ODD": "a b $HOME ;&",
}


def test_the_shell_and_dotenv_read_the_same_values(tmp_path: Path) -> None:
    path = tmp_path / "env"
    write_env_file(path, VALUES)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert dotenv_values(path) == VALUES
    names = " ".join(f'"${name}"' for name in VALUES)
    shell = subprocess.run(
        ["sh", "-c", f'set -a; . "$1"; set +a; printf "%s\\n" {names}', "sh", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=10,
        check=True,
    )
    assert shell.stdout.splitlines() == list(VALUES.values())
    assert not list(tmp_path.glob("*.part"))
