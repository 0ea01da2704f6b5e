"""RunPod Serverless's job routes: ``/run``, ``/runsync``, ``/status/<id>``, ``/cancel/<id>``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from genqueue.simulator.behaviour import Behaviour
from genqueue.simulator.config import push
from genqueue.simulator.generation import DEFAULT_MAX_TOKENS, GenParams
from genqueue.simulator.protocol import Request, Response, Route, json_response

#: Serverless jobs the simulator remembers (the oldest are forgotten first).
MAX_JOBS = 10_000


@dataclass
class Job:
    """A RunPod Serverless job: IN_QUEUE, IN_PROGRESS, then COMPLETED, FAILED or CANCELLED."""

    job_id: str
    state: str = "IN_QUEUE"
    output: Any = None
    error: str | None = None
    task: asyncio.Task[None] = field(init=False)

    def describe(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": self.job_id, "status": self.state}
        if self.output is not None:
            answer["output"] = self.output
        if self.error is not None:
            answer["error"] = self.error
        return answer


class ServerlessRoutes:
    """The jobs of a RunPod Serverless endpoint, each run like a completion."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._jobs: dict[str, Job] = {}

    def routes(self) -> dict[str, Route]:
        post = frozenset({"POST"})
        return {
            "/run": Route(post, self._run, counted=True),
            "/runsync": Route(post, self._runsync, counted=True),
        }

    def prefix_routes(self) -> dict[str, Route]:
        """The routes matched by prefix: ``/status/<id>``, ``/cancel/<id>``."""
        return {
            "/status/": Route(frozenset({"GET"}), self._status),
            "/cancel/": Route(frozenset({"POST"}), self._cancel),
        }

    async def _run(self, request: Request, *_: Any) -> Response:
        job = self._new_job(request)
        if isinstance(job, Response):
            return job
        return json_response(200, {"id": job.job_id, "status": job.state})

    async def _runsync(self, request: Request, *_: Any) -> Response:
        job = self._new_job(request)
        if isinstance(job, Response):
            return job
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(job.task)
        return json_response(200, job.describe())

    async def _status(self, request: Request, *_: Any) -> Response:
        job = self._jobs.get(request.path.rsplit("/", 1)[1])
        if job is None:
            return json_response(404, {"error": "job not found"})
        return json_response(200, job.describe())

    async def _cancel(self, request: Request, *_: Any) -> Response:
        job = self._jobs.get(request.path.rsplit("/", 1)[1])
        if job is None:
            return json_response(404, {"error": "job not found"})
        if job.state in ("IN_QUEUE", "IN_PROGRESS"):
            job.task.cancel()
            job.state = "CANCELLED"
            self._behaviour.stats.jobs_cancelled += 1
        return json_response(200, {"id": job.job_id, "status": job.state})

    def _new_job(self, request: Request) -> Job | Response:
        try:
            payload = json.loads(request.body or b"null")
            job_input = payload["input"]
            prompt = job_input.get("prompt")
            if prompt is None:
                prompt = "\n".join(str(m.get("content", "")) for m in job_input["messages"])
            sampling = job_input.get("sampling_params") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            message = "input must be {'input': {'prompt' or 'messages'}}"
            return json_response(400, {"error": message})
        push(self._behaviour.stats.last_bodies, payload)
        params = GenParams(
            str(prompt),
            int(sampling.get("max_tokens", DEFAULT_MAX_TOKENS)),
            int(sampling.get("seed", -1)),
            (),
        )
        job = Job(job_id=f"job-{next(self._behaviour.ids)}")
        job.task = asyncio.get_running_loop().create_task(self._run_job(job, params))
        self._jobs[job.job_id] = job
        while len(self._jobs) > MAX_JOBS:
            self._jobs.pop(next(iter(self._jobs)))
        return job

    async def _run_job(self, job: Job, params: GenParams) -> None:
        behaviour = self._behaviour
        action = behaviour.script.next_action()
        job.state = "IN_PROGRESS"
        with behaviour.in_flight():
            await behaviour.generate_delay(action.delay_s)
        if action.kind == "status" and action.error is not None:
            # RunPod's vLLM worker (src/handler.py) reports vLLM's refusal in a COMPLETED job.
            job.state = "COMPLETED"
            message = f"vLLM returned HTTP {action.status}: {action.error}"
            job.output = [{"error": {"message": message, "type": "worker_error", "code": None}}]
            return
        if action.kind != "ok":
            job.state, job.error = "FAILED", f"injected failure: {action.kind} {action.status}"
            return
        answer = json.loads(behaviour.answer(params, chat=False, size_bytes=action.size_bytes).body)
        choice = answer["choices"][0]
        job.state = "COMPLETED"
        job.output = [{
            "choices": [{"tokens": [choice["text"]], "finish_reason": choice["finish_reason"]}],
            "usage": {
                "input": answer["usage"]["prompt_tokens"],
                "output": answer["usage"]["completion_tokens"],
            },
        }]  # fmt: skip
