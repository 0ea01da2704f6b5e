"""A pool's affinity key: a digest of the system message (or the first characters of the first
message) with ``prefix``, of ``metadata.session`` with ``session``; none without affinity."""

from __future__ import annotations

from worker.contract import GenerationRequest
from worker.endpoints.config import EndpointSpec
from worker.pipeline.affinity import AFFINITY_PREFIX_CHARS, affinity_for


def pool(affinity: str) -> EndpointSpec:
    return EndpointSpec(name="p", urls=("http://a:1", "http://b:1"), affinity=affinity)  # type: ignore[arg-type]


def test_prefix_affinity_follows_the_system_message() -> None:
    spec = pool("prefix")
    one = affinity_for(GenerationRequest(prompt="a", system="You are terse."), spec)
    two = affinity_for(GenerationRequest(prompt="b", system="You are terse."), spec)
    other = affinity_for(GenerationRequest(prompt="a", system="You are verbose."), spec)
    chat = GenerationRequest(
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "c"}]
    )
    assert one == two == affinity_for(chat, spec) and one != other
    assert "terse" not in one and len(one) == 24  # a digest, not the text


def test_prefix_affinity_without_a_system_message_reads_the_first_characters() -> None:
    spec = pool("prefix")
    head = "x" * AFFINITY_PREFIX_CHARS
    assert affinity_for(GenerationRequest(prompt=head + "1"), spec) == affinity_for(
        GenerationRequest(prompt=head + "2"), spec
    )
    assert affinity_for(GenerationRequest(prompt="y" + head), spec) != affinity_for(
        GenerationRequest(prompt=head), spec
    )


def test_session_affinity_and_none() -> None:
    session = pool("session")
    a = affinity_for(GenerationRequest(prompt="1", metadata={"session": "s-1"}), session)
    b = affinity_for(GenerationRequest(prompt="2", metadata={"session": "s-1"}), session)
    assert a == b != ""
    assert affinity_for(GenerationRequest(prompt="1"), session) == ""
    assert affinity_for(GenerationRequest(prompt="1", metadata={"session": 3}), session) == ""
    assert affinity_for(GenerationRequest(prompt="1", system="S"), pool("off")) == ""
