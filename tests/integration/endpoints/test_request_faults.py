"""One bad request never stalls the pool: a failure that follows one request fails that request
and stays out of the circuit breaker's count; an open breaker probes again soon."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from genqueue.embedded_redis import free_port
from tests.integration.reliability.conftest import send, wait_for
from worker import keys
from worker.errors import CircuitOpenError, ConnectionDropped, RetryableEndpointError
from worker.limits.guard import EndpointGuard, GuardPolicy, Outcome
from worker.pipeline.request_faults import RequestFaults, Verdict

pytestmark = pytest.mark.timeout(120)

FAST = {"GENQUEUE_RETRY_BASE_DELAY_S": 0.1, "GENQUEUE_RETRY_MAX_DELAY_S": 0.2}
#: llama.cpp's server (llama-cpp-python) answers an invalid ``top_k`` so.
VALIDATION_500 = {
    "status": 500,
    "body": json.dumps(
        {
            "error": {
                "message": "1 validation error for CreateCompletionRequest\ntop_k\n  Input "
                "should be greater than or equal to 0",
                "type": "internal_server_error",
            }
        }
    ),
    "content_type": "application/json",
}


def _error(redis_client, task_id: str) -> dict:
    return json.loads(redis_client.hget(keys.task_record(task_id), "error"))


def test_a_validation_error_500_fails_once_and_leaves_the_breaker_closed(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url, GENQUEUE_BREAKER_FAILURE_THRESHOLD=1, **FAST)
    simulator.script(VALIDATION_500)
    bad = send(celery_client, "bad", params={"top_k": 2})
    with pytest.raises(Exception, match="validation error"):
        bad.get(timeout=30)
    error = _error(redis_client, bad.id)
    assert error["type"] == "endpoint_rejected"
    assert error["message"].startswith("endpoint 'default' answered 500: 1 validation error")
    assert simulator.stats()["calls"] == 1
    assert redis_client.hget(keys.breaker("default"), "failures") is None
    started = time.monotonic()
    assert send(celery_client, "good").get(timeout=10)["text"]
    assert time.monotonic() - started < 3  # no breaker to wait out


class CrashingServer:
    """A server that dies on every request: it stops listening and drops the connection,
    then comes back 0.3 s later (a supervisor restarting it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        listener.settimeout(0.2)
        return listener

    def _serve(self) -> None:
        while not self._stop.is_set():
            listener = self._listen()
            try:
                while not self._stop.is_set():
                    try:
                        conn, _ = listener.accept()
                        break
                    except TimeoutError:
                        continue
                else:
                    return
                conn.recv(65536)
                self.requests += 1
            finally:
                listener.close()  # the process dies: its sockets close together
            conn.close()
            time.sleep(0.3)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def crashing_server() -> Iterator[CrashingServer]:
    server = CrashingServer()
    yield server
    server.stop()


def test_a_request_that_crashes_the_server_twice_is_poison(
    redis_url, redis_client, crashing_server, start_worker, celery_client
) -> None:
    start_worker(
        redis_url, crashing_server.url, GENQUEUE_RETRY_MAX_ATTEMPTS=20,
        GENQUEUE_BREAKER_FAILURE_THRESHOLD=100, **FAST,
    )  # fmt: skip
    result = send(celery_client, "crash me", params={"grammar": "root ::= ("})
    with pytest.raises(Exception, match="crashed"):
        result.get(timeout=60)
    error = _error(redis_client, result.id)
    assert error["type"] == "poison"
    assert "each of the 2 times this request was sent" in error["message"]
    assert crashing_server.requests == 2  # never sent a third time
    dead = [json.loads(raw) for raw in redis_client.lrange(keys.dead_letters(), 0, -1)]
    assert [entry["task_id"] for entry in dead] == [result.id]


def _retryable_500() -> RetryableEndpointError:
    return RetryableEndpointError("endpoint answered 500: boom", status_code=500)


def test_the_same_failure_while_others_succeed_is_the_request_s_fault(redis_client) -> None:
    faults = RequestFaults(redis_client)
    judge = faults.judge
    base = "http://127.0.0.1:9"
    assert judge("t1", "e", base, _retryable_500()).fault is None
    # Nothing served in between: the endpoint may be down for everyone.
    assert judge("t1", "e", base, _retryable_500()).fault is None
    redis_client.hincrby(keys.breaker("e"), "served", 1)  # another task succeeded
    verdict = judge("t1", "e", base, _retryable_500())
    assert verdict.request_caused and verdict.fault is not None
    assert verdict.fault.error_type == "endpoint_rejected"
    assert verdict.fault.message == (
        "endpoint 'e' failed this request the same way on every attempt while it served other "
        "tasks: endpoint answered 500: boom"
    )
    # Another failure kind (a 503 comes and goes) is never held against the request.
    redis_client.hincrby(keys.breaker("e"), "served", 1)
    busy = RetryableEndpointError("endpoint answered 503", status_code=503)
    assert judge("t2", "e", base, busy).fault is None
    assert judge("t2", "e", base, busy).fault is None


def test_a_dropped_connection_to_a_live_server_is_not_a_crash(redis_client) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        verdict = RequestFaults(redis_client).judge("t", "e", url, ConnectionDropped("dropped"))
    assert verdict.fault is None and not verdict.request_caused


def test_a_crash_with_several_calls_in_flight_is_pinned_on_none(redis_client) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    expiry_ms = (time.time() + 60) * 1000
    faults = RequestFaults(redis_client)
    redis_client.zadd(keys.lease("busy"), {"call-a": expiry_ms, "call-b": expiry_ms})
    for task_id in ("a", "b"):  # dropped together when the server died
        verdict = faults.judge(task_id, "busy", nothing_listens, ConnectionDropped("dropped"))
        assert verdict == Verdict()
        assert redis_client.hget(keys.task_record(task_id), "crashes:busy") is None
    redis_client.zadd(keys.lease("alone"), {"call-c": expiry_ms})
    verdict = faults.judge("c", "alone", nothing_listens, ConnectionDropped("dropped"))
    assert verdict == Verdict(request_caused=True)  # the only call in flight: a crash on it
    assert redis_client.hget(keys.task_record("c"), "crashes:alone") == b"1"


def test_the_breaker_probes_soon_and_waits_longer_after_each_failed_probe(
    redis_client,
) -> None:
    policy = GuardPolicy(limit=1, failure_threshold=1, cooldown_s=0.2, cooldown_max_s=0.5)
    guard = EndpointGuard(redis_client, "grow", policy)
    breaker = keys.breaker("grow")
    waits = []
    try:
        for _ in range(4):
            deadline = time.monotonic() + 5
            while True:  # wait out the cooldown, then probe (and fail)
                try:
                    with guard.slot() as slot:
                        slot.outcome = Outcome.FAILURE
                    break
                except CircuitOpenError:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            waits.append(int(redis_client.hget(breaker, "cooldown")))
        assert waits == [200, 300, 450, 500]
        with pytest.raises(CircuitOpenError), guard.slot():
            pass
        time.sleep(0.55)
        with guard.slot() as slot:
            slot.outcome = Outcome.OK
        state = redis_client.hgetall(breaker)
        assert state == {b"served": b"1"}  # closed, and the success counted
    finally:
        guard.close()


def test_a_restarted_endpoint_is_used_within_seconds(
    redis_url, simulator, start_worker, celery_client
) -> None:
    start_worker(
        redis_url, simulator.url, GENQUEUE_BREAKER_FAILURE_THRESHOLD=2,
        GENQUEUE_RETRY_MAX_ATTEMPTS=10, **FAST,
    )  # fmt: skip
    simulator.configure(fail_rate=1.0, fail_status=503)
    results = [send(celery_client, f"n{i}") for i in range(4)]
    wait_for(lambda: simulator.stats()["calls"] >= 2, 20, "the first failures")
    time.sleep(6)  # down for a while: a few probes fail
    simulator.configure(fail_rate=0.0)
    back = time.monotonic()
    assert all(r.get(timeout=30)["text"] for r in results)
    assert time.monotonic() - back < 4
