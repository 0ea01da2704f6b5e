"""Server-sent events as the endpoints send them, cut anywhere by the network."""

from __future__ import annotations

from worker.endpoints.streaming import stream_events


def _cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_events_with_crlf_cut_at_every_byte() -> None:
    body = b'data: {"a": 1}\r\n\r\n: ping\r\n\r\ndata: {"b": 2}\r\n\r\ndata: [DONE]\r\n\r\n'
    for size in (1, 2, 3, 7, 1000):
        assert list(stream_events(iter(_cut(body, size)))) == ['{"a": 1}', '{"b": 2}', "[DONE]"]


def test_events_with_lf_fields_and_multiline_data() -> None:
    body = b"event: message\nid: 3\ndata: one\ndata: two\n\ndata:three\n\n"
    assert list(stream_events(iter(_cut(body, 5)))) == ["one\ntwo", "three"]


def test_a_last_event_without_its_blank_line_is_kept() -> None:
    assert list(stream_events(iter([b"data: [DONE]"]))) == ["[DONE]"]
