"""Which requests a pool keeps on one replica (``affinity`` in the endpoints file).

- ``prefix``: requests that share a system message, or (with none) the same first
  ``AFFINITY_PREFIX_CHARS`` characters of their first message, share a key, so their prompt's
  cache (llama.cpp's ``cache_prompt``, vLLM's prefix cache) is warm on the replica that served
  it last;
- ``session``: requests that carry the same ``metadata.session`` string share a key; a request
  without one goes by room alone.

The key is a digest (:func:`worker.limits.pool.affinity_key`): no prompt text reaches Redis.
"""

from __future__ import annotations

from worker.contract import GenerationRequest
from worker.endpoints.config import EndpointSpec
from worker.limits.pool import affinity_key
from worker.pipeline.render import as_messages

#: How much of a first message without a system message the ``prefix`` affinity reads.
AFFINITY_PREFIX_CHARS = 1_000


def affinity_for(request: GenerationRequest, spec: EndpointSpec) -> str:
    """The affinity key of ``request`` on the pool ``spec`` ("": none)."""
    if spec.affinity == "session":
        session = (request.metadata or {}).get("session")
        return affinity_key(f"s:{session}") if isinstance(session, str) and session else ""
    if spec.affinity == "prefix":
        messages = as_messages(request)
        system = next((m.content for m in messages if m.role == "system"), None)
        if system:
            return affinity_key(f"p:{system}")
        return affinity_key(f"f:{messages[0].content[:AFFINITY_PREFIX_CHARS]}")
    return ""
