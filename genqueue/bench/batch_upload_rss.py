"""Peak memory of ``genqueue api`` while it takes one large ``POST /v1/batches``.

    python -m genqueue.bench.batch_upload_rss         # 64 MiB bodies, both shapes
    python -m genqueue.bench.batch_upload_rss --mib 8 --shape tiny

Starts its own embedded Redis and one ``genqueue api`` process (``GENQUEUE_API_PROCESSES=1``),
then for each body shape starts a fresh API, reads its peak RSS (``VmHWM`` in
``/proc/<pid>/status``) once it is idle, posts the body, and reads it again:

``tiny``
    lines of about 20 bytes (``{"custom_id":"1"}``-like, each an invalid request), far more of
    them than ``GENQUEUE_BATCH_MAX_REQUESTS``: the worst case of parsing cost per byte.
``valid``
    ``GENQUEUE_BATCH_MAX_REQUESTS`` (50,000) valid lines, each with a prompt long enough to fill
    the body: the largest batch the API accepts, enqueued for real.

Prints one JSON line per shape: the status answered, seconds taken, and the peak RSS before and
after (MiB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import requests

from genqueue.bench.processes import base_env, peak_rss_kb
from genqueue.embedded_redis import EmbeddedRedis, free_port

MIB = 1_048_576
MAX_REQUESTS = 50_000


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` of the process: the most memory it has held resident since it started."""
    kb = peak_rss_kb(pid)
    if kb is None:
        raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
    return kb / 1024


def tiny_body(size: int) -> bytes:
    lines, total, index = [], 0, 0
    while True:
        text = f'{{"custom_id":"{index}"}}\n'
        if total + len(text) > size:
            break
        lines.append(text)
        total += len(text)
        index += 1
    return "".join(lines).encode()


def valid_body(size: int) -> bytes:
    pad = max(1, size // MAX_REQUESTS - 60)  # each line's JSON around the prompt: < 60 bytes
    return "".join(
        json.dumps({"custom_id": f"req-{i}", "prompt": f"{i} " + "x" * pad}) + "\n"
        for i in range(MAX_REQUESTS)
    ).encode()


def chunks(body: bytes, size: int = 1 * MIB) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def start_api(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = base_env()
    env.update(REDIS_URL=url, GENQUEUE_API_PROCESSES="1", GENQUEUE_LOG_LEVEL="WARNING")
    argv = [sys.executable, "-m", "genqueue", "api", "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the API did not start; see {log}")


def measure(shape: str, body: bytes, url: str, work: Path) -> dict[str, Any]:
    redis.Redis.from_url(url).flushdb()
    port = free_port()
    proc = start_api(url, port, work / f"api-{shape}.log")
    try:
        time.sleep(1.0)
        idle = peak_rss_mib(proc.pid)
        started = time.monotonic()
        response = requests.post(
            f"http://127.0.0.1:{port}/v1/batches",
            data=chunks(body),  # sent chunked, as a streaming client would
            headers={"Content-Type": "application/x-ndjson"},
            timeout=600,
        )
        took = time.monotonic() - started
        return {
            "shape": shape,
            "body_mib": round(len(body) / MIB, 1),
            "status": response.status_code,
            "seconds": round(took, 2),
            "idle_peak_rss_mib": round(idle, 1),
            "peak_rss_mib": round(peak_rss_mib(proc.pid), 1),
        }
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="body size in MiB (64)")
    parser.add_argument("--shape", action="append", choices=("tiny", "valid"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="genqueue-upload-rss-"))
    server = EmbeddedRedis(work / "redis").start()
    try:
        for shape in args.shape or ("tiny", "valid"):
            make = tiny_body if shape == "tiny" else valid_body
            body = make(args.mib * MIB)
            print(json.dumps(measure(shape, body, server.url, work)), flush=True)
            del body
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
