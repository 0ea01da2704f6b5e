"""worker.limits.script_replies: each limits script's reply, decoded by name."""

from __future__ import annotations

import pytest

from worker.limits import script_replies as replies
from worker.limits.script_replies import ReplicaPick, SlotAnswer, SlotReply


@pytest.mark.parametrize(
    ("reply", "decoded"),
    [
        ([1, 0], SlotReply(SlotAnswer.TAKEN, 0)),
        ([1, 0, 3, 2], SlotReply(SlotAnswer.TAKEN, 0, (3, 2))),
        ([0, 0], SlotReply(SlotAnswer.NONE_FREE, 0)),
        ([2, 1500], SlotReply(SlotAnswer.BREAKER_OPEN, 1500)),
        ([3, 20000], SlotReply(SlotAnswer.RATE_LIMITED, 20000)),
        ([4, 0], SlotReply(SlotAnswer.CLAIMED_ELSEWHERE, 0)),
        ([5, 0], SlotReply(SlotAnswer.CANCELLED, 0)),
    ],
)
def test_a_slot_answer_is_read_by_name(reply: list[int], decoded: SlotReply) -> None:
    assert replies.slot_acquire(reply) == decoded


def test_an_unknown_slot_answer_is_refused() -> None:
    with pytest.raises(ValueError, match="6"):
        replies.slot_acquire([6, 0])


@pytest.mark.parametrize(
    ("reply", "decoded"),
    [
        ([2, 0], ReplicaPick(2, 0, full=False)),
        ([-1, 800], ReplicaPick(None, 800, full=False)),
        ([-2, 0], ReplicaPick(None, 0, full=True)),
    ],
)
def test_a_replica_pick_is_read_by_name(reply: list[int], decoded: ReplicaPick) -> None:
    assert replies.pool_pick(reply) == decoded


def test_the_sweep_and_the_renewal_are_read_by_name() -> None:
    assert replies.lease_sweep([2, 5]) == replies.LeaseSweep(granted=2, removed=5)
    assert replies.admit_renew([b"a.1", "b.2"]) == ["a.1", "b.2"]
