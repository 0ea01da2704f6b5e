"""RunPod Serverless: queue a job (``/run``), poll ``/status/{id}``, cancel, or ``/runsync``.

The input is the serverless vLLM worker's shape: ``{"input": {"prompt" | "messages",
"sampling_params": {...}}}``. Knows nothing of Celery: polling is the caller's business (the
task polls from a retry countdown, so a job waiting in RunPod's queue holds no worker slot).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import requests

from worker.contract import GenerationResult, Usage
from worker.endpoints.answers import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ERROR_BODY_MAX_BYTES,
    response_limit_bytes,
)
from worker.endpoints.classify import classify_transport_error, read_answer
from worker.endpoints.disclosure import EndpointVoice
from worker.errors import (
    InvalidEndpointResponse,
    PermanentEndpointError,
)

#: RunPod's job states, as genqueue sees them.
PENDING_STATES = frozenset({"IN_QUEUE", "IN_PROGRESS", "RUNNING"})
FAILED_STATES = frozenset({"FAILED", "TIMED_OUT"})


@dataclass(frozen=True)
class Job:
    """A serverless job as ``/run``, ``/status`` or ``/runsync`` describe it."""

    job_id: str
    state: str
    output: Any = None
    error: str | None = None


#: How much of a failed job's error is kept.
JOB_ERROR_MAX_CHARS = 300


def job_input(
    prompt: str | None, messages: list[dict[str, str]] | None, params: dict[str, Any]
) -> dict[str, Any]:
    """The body of ``/run``: the vLLM worker's input shape."""
    # The vLLM worker takes genqueue's sampling parameters under the same names.
    body: dict[str, Any] = {"sampling_params": dict(params)}
    if messages is not None:
        body["messages"] = messages
    else:
        body["prompt"] = prompt
    return {"input": body}


class ServerlessClient:
    """Calls one serverless endpoint through ``session`` (shared, pooled).

    Answers are read with a byte cap (see :mod:`worker.endpoints.answers`): a job's output as a
    completion
    of its ``max_tokens``, anything else as an error body.
    """

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        api_key: str | None,
        timeout_s: tuple[float, float],
        *,
        name: str = "default",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._voice = EndpointVoice.of(name, self._base, api_key)
        self._max_response_bytes = max_response_bytes

    def submit(self, body: dict[str, Any]) -> Job:
        return self._job(self._call("POST", "/run", body, self._limit(_max_tokens(body))))

    def run_sync(self, body: dict[str, Any]) -> Job:
        return self._job(self._call("POST", "/runsync", body, self._limit(_max_tokens(body))))

    def status(self, job_id: str, max_tokens: int | None = None) -> Job:
        """The job's state (and output, its answer read as a completion of ``max_tokens``)."""
        limit = self._limit(max_tokens)
        try:
            return self._job(self._call("GET", f"/status/{job_id}", None, limit), job_id)
        except PermanentEndpointError as err:
            if err.status_code != 405:
                raise
        # The runpod package's local development server answers /status to POST only.
        return self._job(self._call("POST", f"/status/{job_id}", None, limit), job_id)

    def cancel(self, job_id: str) -> None:
        self._call("POST", f"/cancel/{job_id}", None, ERROR_BODY_MAX_BYTES)

    def _limit(self, max_tokens: int | None) -> int:
        return response_limit_bytes(max_tokens, self._max_response_bytes)

    def _call(self, method: str, path: str, body: Any, limit_bytes: int) -> Any:
        read_s = self._timeout_s[1]
        try:
            response = self._session.request(
                method,
                self._base + path,
                data=json.dumps(body) if body is not None else None,
                headers=self._headers,
                timeout=self._timeout_s,
                allow_redirects=False,
                stream=True,
            )
            text = read_answer(response, limit_bytes, time.monotonic() + read_s, self._voice)
        except requests.RequestException as err:
            raise classify_transport_error(err, self._voice, self._timeout_s) from None
        try:
            return json.loads(text)
        except ValueError:
            raise InvalidEndpointResponse(
                self._voice.says(f" answered {response.status_code} but the body is not JSON")
            ) from None

    def _job(self, answer: Any, job_id: str | None = None) -> Job:
        if not isinstance(answer, dict) or "status" not in answer:
            raise InvalidEndpointResponse(self._voice.says(" answered without a job status"))
        error = answer.get("error")
        return Job(
            job_id=str(answer.get("id") or job_id or ""),
            state=str(answer["status"]).upper(),
            output=answer.get("output"),
            error=self._voice.scrub(str(error))[:JOB_ERROR_MAX_CHARS] if error else None,
        )


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("input", {}).get("sampling_params", {}).get("max_tokens")
    return value if isinstance(value, int) else None


def result_from(job: Job, latency_ms: int) -> GenerationResult:
    """The generation result from a COMPLETED job's output (vLLM worker or OpenAI shapes)."""
    output = job.output
    if isinstance(output, list) and output:
        output = output[0]
    if isinstance(output, str):
        return GenerationResult(
            text=output, finish_reason=None, model=None, usage=Usage(), latency_ms=latency_ms
        )
    if isinstance(output, dict) and isinstance(output.get("error"), dict):
        raise output_error(job.job_id, output["error"])
    if not isinstance(output, dict) or not output.get("choices"):
        raise InvalidEndpointResponse("serverless job completed without choices in its output")
    choice = output["choices"][0]
    text = _choice_text(choice)
    usage = output.get("usage") or {}
    prompt_tokens = int(usage.get("input", usage.get("prompt_tokens", 0)) or 0)
    completion_tokens = int(usage.get("output", usage.get("completion_tokens", 0)) or 0)
    return GenerationResult(
        text=text,
        finish_reason=choice.get("finish_reason"),
        model=output.get("model"),
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        latency_ms=latency_ms,
    )


#: How RunPod's vLLM worker (``src/handler.py``) words vLLM's own refusal in a job's output.
_VLLM_STATUS = re.compile(r"^vLLM returned HTTP (\d{3})\b")


def output_error(job_id: str, error: dict[str, Any]) -> PermanentEndpointError:
    """The error a COMPLETED job's output carries (``{"error": {"message": ...}}``: RunPod's
    vLLM worker reports vLLM's refusals and its own failures so, with the job COMPLETED). Final,
    as a FAILED job is: RunPod ran the job; its message and vLLM's status are kept."""
    message = str(error.get("message") or error)[:JOB_ERROR_MAX_CHARS]
    found = _VLLM_STATUS.match(message)
    return PermanentEndpointError(
        f"serverless job {job_id} answered an error: {message}",
        status_code=int(found.group(1)) if found else None,
    )


def _choice_text(choice: dict[str, Any]) -> str:
    if isinstance(choice.get("tokens"), list):
        return "".join(str(token) for token in choice["tokens"])
    if isinstance(choice.get("text"), str):
        return str(choice["text"])
    message = choice.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return str(message["content"])
    raise InvalidEndpointResponse("serverless job output has a choice without text")


def failure(job: Job) -> PermanentEndpointError:
    return PermanentEndpointError(
        f"serverless job {job.job_id} ended {job.state}" + (f": {job.error}" if job.error else "")
    )
