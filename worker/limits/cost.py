"""What a turn at an endpoint costs: fair by tasks, or fair by tokens (docs/scheduling.md).

An endpoint's ``fairness`` (the endpoints file; ``GENQUEUE_FAIRNESS`` for the default endpoint
of ``RUNPOD_ENDPOINT_URL``) says how its tenants share it. By ``tasks`` (the default), each
task a tenant is served moves its virtual clock on by ``1/weight``: tenants get turns by
weight, whatever their tasks cost. By ``tokens``, as in the Virtual Token Counter (VTC: Sheng
et al., "Fairness in Serving Large Language Models", OSDI 2024), a task moves its tenant's clock
on by ``cost/weight``, where its cost is what it may spend, estimated before it runs: its
prompt's tokens (about four characters a token) plus its ``max_tokens`` (else
``GENQUEUE_DEFAULT_MAX_TOKENS``), the estimate a submission holds of ``tokens_per_day``. At the
task's end, its tenant's clock moves by ``(actual - estimate)/weight``, actual being the
result's ``prompt_tokens + completion_tokens``, where the tenant still has a clock (tasks
queued): tenants get turns in inverse proportion to what their tasks really cost.

The charge is made where order is decided: the admission queue (``limits/scripts/
lib/admission_queue.lua``: the waiter's ``cost``) and the backlog
(``delivery/scripts/lib/backlog_fair_order.lua``: the message's cost, from its task's record or its
body), and settled by the task's end script (``delivery/scripts/task_end.lua``), in the round trip
the end makes anyway.
"""

from __future__ import annotations

from worker.contract import GenerationRequest, request_tokens_estimate
from worker.settings import Fairness


def turn_cost(
    fairness: Fairness, request: GenerationRequest, default_max_tokens: int
) -> int | None:
    """The cost of ``request``'s turn at an endpoint fair by ``fairness``: ``None`` by tasks
    (1, and nothing to settle), its estimated tokens by tokens."""
    if fairness != "tokens":
        return None
    return request_tokens_estimate(request, default_max_tokens)


def settle_args(cost: int | None, band: int, weight: float) -> tuple[str | int, ...]:
    """The end script's settling arguments for a turn of ``cost`` (none by tasks): the
    estimate, the admission band and the tenant's weight."""
    return () if cost is None else (cost, band, repr(weight))
