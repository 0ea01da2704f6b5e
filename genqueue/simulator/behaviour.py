"""How the simulated endpoint behaves: its config, stats, script, generation delay and answers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterator
from typing import Any

from genqueue.simulator.config import (
    MAX_WAIT_S,
    SimulatorConfig,
    SimulatorStats,
    config_value_error,
    push,
)
from genqueue.simulator.generation import GenParams, generate_text
from genqueue.simulator.pod import SimulatedPod
from genqueue.simulator.protocol import (
    Request,
    Response,
    json_response,
    set_linger_zero,
    sleep,
    wait_for_eof,
)
from genqueue.simulator.script import Action, Script, action_response
from genqueue.simulator.streaming import EVENT_STREAM, no_events, stream_events

#: How often a batched generation looks at how many run with it, in seconds.
BATCH_STEP_S = 0.02


class Behaviour:
    """What every route shares: the live config, the stats, the script and the generator."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self.script = Script(config)
        self.ids = itertools.count(1)
        self._text_rng = random.Random()
        self._generation_lock = asyncio.Lock()
        self._batch = 0  # generations running in batching mode (config.batch_knee)
        #: The RunPod pod it plays when ``config.pod_id`` is set.
        self.pod = SimulatedPod(config, lambda: self.stats)

    # ---- stats

    def record_arrival(self, request: Request) -> None:
        stats = self.stats
        stats.calls += 1
        push(stats.call_times, time.time())
        auth = request.headers.get("authorization")
        if auth is not None:
            push(stats.auth_headers, auth)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        stats = self.stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            yield
        finally:
            stats.in_flight -= 1

    def reset(self) -> None:
        """Clear the stats (the requests in flight stay counted) and the script."""
        in_flight = self.stats.in_flight
        self.stats = SimulatorStats(in_flight=in_flight, max_in_flight=in_flight)
        self.script.clear()

    # ---- config

    def authorized(self, request: Request) -> bool:
        key = self.config.api_key
        return key is None or request.headers.get("authorization") == f"Bearer {key}"

    def update_config(self, update: Any) -> str | None:
        """Apply a ``POST /_sim/config`` update; return why it is refused (None when applied)."""
        if not isinstance(update, dict):
            return "config update must be a JSON object"
        for name, value in update.items():
            error = config_value_error(name, value)
            if error:
                return error
        for name, value in update.items():
            setattr(self.config, name, value)
        if "seed" in update:
            self.script.reseed()
        return None

    # ---- answers

    async def perform(
        self, action: Action, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Response | None:
        """Carry out a scripted action other than ``ok`` (None: drop the connection)."""
        if action.kind == "hang":
            await wait_for_eof(reader, MAX_WAIT_S)
            return None
        await sleep(action.delay_s or 0.0)
        if action.kind == "reset":
            set_linger_zero(writer)
            return None
        retry_after = self.config.retry_after_s
        return action_response(action, None if retry_after is None else f"{retry_after:g}")

    async def generate_delay(self, delay_s: float | None) -> None:
        delay = self.config.latency_s if delay_s is None else delay_s
        if self.config.batch_knee > 0 and delay_s is None:
            await self._batched(delay)
        elif self.config.one_at_a_time:
            async with self._generation_lock:
                await sleep(delay)
        else:
            await sleep(delay)

    async def _batched(self, work_s: float) -> None:
        """A generation of ``work_s`` seconds alone, sharing the server with the others
        running: at full speed up to the knee, slower past it (read at each step, so a knee
        changed mid-run applies at once)."""
        self._batch += 1
        try:
            left_s = work_s
            while left_s > 0:
                knee, slowdown = self.config.batch_knee, self.config.batch_slowdown
                speed = min(1.0, knee / self._batch) ** slowdown if knee > 0 else 1.0
                step_s = min(BATCH_STEP_S, left_s / speed)
                await sleep(step_s)
                left_s -= step_s * speed
        finally:
            self._batch -= 1

    def _text(self, params: GenParams) -> tuple[str, str]:
        rng = self._text_rng
        if params.seed != -1:
            rng = random.Random(f"{params.seed}:{params.prompt}")
        return generate_text(rng, params.max_tokens, params.stop)

    async def stream(self, params: GenParams, chat: bool, action: Action) -> Response:
        """A streamed answer (``stream: true``, or a scripted ``empty_stream`` or
        ``break_stream``): its first event after the generation delay, then a piece every
        ``token_interval_s``."""
        if action.kind == "empty_stream":
            return Response(200, content_type=EVENT_STREAM, stream=no_events(), close=True)
        await self.generate_delay(action.delay_s)
        text, finish_reason = self._text(params)
        if action.kind != "break_stream":
            self.stats.completions_ok += 1
        usage = None
        if params.include_usage and self.config.stream_usage:
            usage = self._usage(params, text)
        events = stream_events(
            text, finish_reason, model=self.config.model, chat=chat,
            interval_s=self.config.token_interval_s,
            break_after=2 if action.kind == "break_stream" else None, usage=usage,
        )  # fmt: skip
        return Response(200, content_type=EVENT_STREAM, stream=events)

    def answer(self, params: GenParams, chat: bool, size_bytes: int | None = None) -> Response:
        text, finish_reason = self._text(params)
        if size_bytes is not None:  # scripted: a text that makes the body about this large
            text += "x" * max(0, size_bytes - len(text) - 400)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        self.stats.completions_ok += 1
        return json_response(200, {
            "id": f"conv-{next(self.ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [choice],
            "usage": self._usage(params, text),
        })  # fmt: skip

    @staticmethod
    def _usage(params: GenParams, text: str) -> dict[str, int]:
        """The answer's token counts (a word a token), streamed or not."""
        prompt_tokens = max(1, len(params.prompt.split()))
        completion_tokens = len(text.split())
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
