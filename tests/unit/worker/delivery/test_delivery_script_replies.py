"""worker.delivery.script_replies: each delivery script's reply, decoded by name."""

from __future__ import annotations

from worker.delivery import script_replies as replies
from worker.limits.script_replies import SlotAnswer, SlotReply


def test_a_fetch_gives_each_message_and_each_one_set_aside() -> None:
    reply = [b"gen", b'{"a": 1}', b"tag-1", b"gen\x06\x163", None, None]
    assert replies.fetch(reply) == [
        replies.Fetched("gen", '{"a": 1}', "tag-1"),
        replies.Fetched("gen\x06\x163", None, None),
    ]


def test_a_sort_says_what_it_moved_and_whether_more_is_queued() -> None:
    assert replies.backlog_sort([3, 1, b"gen"]) == replies.BacklogSorted(3, True, ["gen"])
    assert replies.backlog_sort([0, 0]) == replies.BacklogSorted(0, False, [])


def test_a_task_start_names_its_fields_and_its_slot_answer() -> None:
    fields = [b"2", b"1700000000.5", None, b"b", b"a,b", None, b"0"]
    start = replies.task_start([1, fields, None, [1, 0, 3, 1]])
    assert start == replies.TaskStart(
        1, "2", "1700000000.5", None, "b", "a,b", None, "0", None,
        SlotReply(SlotAnswer.TAKEN, 0, (3, 1)),
    )  # fmt: skip
    assert replies.task_start([1, [None] * 7, b"{}", None]).slot is None


def test_a_task_end_names_the_records_fields() -> None:
    assert replies.task_end([b"1", b"3", b"2026-01-01T00:00:00Z"]) == replies.TaskEnd(
        True, 3, "2026-01-01T00:00:00Z"
    )
    assert replies.task_end([None, None, None]) == replies.TaskEnd(False, 0, None)
