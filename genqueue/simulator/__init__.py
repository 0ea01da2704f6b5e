"""A fake text-generation-webui completions endpoint (standard library only).

Speaks the subset of text-generation-webui's OpenAI-compatible API that the worker uses, and is
used by the tests, the benchmark and ``genqueue up`` when no real endpoint is configured.

The HTTP server is a small hand-written HTTP/1.1 implementation on asyncio streams: one coroutine
per connection, keep-alive, ``Content-Length`` bodies only.

Fault injection is controlled at runtime over HTTP (the ``/_sim/*`` routes need no auth and are
never counted in the stats):

``POST /_sim/script``  ``{"actions": [...]}`` appends actions to a FIFO queue. Each completion
request (``/v1/completions`` or ``/v1/chat/completions``) that passes the API-key check pops the
next action; with an empty queue it behaves normally (subject to ``fail_rate``). Actions:

* ``"ok"``, ``"hang"``, ``"reset"``, ``"bad_json"``, ``"bad_shape"`` (strings), or the same as
  ``{"action": "hang", "delay_s": 1}``;
* ``{"status": 500, "body": "...", "content_type": "text/plain", "retry_after": "2",
  "error": "message", "delay_s": 1}`` (every key but ``status`` optional);
* on a RunPod Serverless job, a status action with ``error`` completes the job with the error
  output of RunPod's vLLM worker (``{"error": {"message": "vLLM returned HTTP <status>: ..."}}``);
  any other failing action ends it ``FAILED``;
* ``{"delay_s": 3}``: a normal answer after 3 s instead of ``latency_s``;
* ``"size_bytes": N`` on a normal answer pads its text so the body is about N bytes (a serverless
  job's output too); on a status action without ``body``, the body is N bytes of text;
* ``"gzip": true`` sends the body gzip-compressed with ``Content-Encoding: gzip`` (with
  ``size_bytes``, a small download that inflates to N bytes: a gzip bomb).

``POST /_sim/config`` updates :class:`SimulatorConfig` fields live (``GET`` returns them),
``GET /_sim/stats`` returns :class:`SimulatorStats` as JSON, ``POST /_sim/reset`` clears the stats
and the script.
"""

from genqueue.simulator.config import SimulatorConfig, SimulatorStats
from genqueue.simulator.running import RunningSimulator, run, serve_in_thread
from genqueue.simulator.server import Simulator

__all__ = [
    "RunningSimulator",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "run",
    "serve_in_thread",
]
