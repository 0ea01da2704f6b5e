"""What a task passes before it seeks an endpoint's slot (the guard asks it first)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class SlotGate(Protocol):
    """A gate before the slots: the endpoint's pod, which must be up
    (:class:`worker.endpoints.pods.gate.PodGate`)."""

    def is_open(self) -> bool:
        """Whether a slot may be taken now, without waiting (an offer in passing)."""
        ...

    def wait(self, deadline: datetime | None) -> None:
        """Return once a slot may be sought; raise if it never may, or the deadline passes."""
        ...
