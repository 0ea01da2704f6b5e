"""The replies of the producers' Lua scripts (``api_producer/scripts/``), decoded in one place:
what each header's ``Returns`` line says, as a value a caller reads by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RateCharge:
    """``rate_charge.lua``: the window's count after the charge, or ``None`` when it would pass
    the limit (nothing was counted)."""

    used: int | None

    @property
    def refused(self) -> bool:
        return self.used is None


def rate_charge(reply: Any) -> RateCharge:
    used = int(reply)
    return RateCharge(used if used >= 0 else None)


@dataclass(frozen=True)
class TokenHold:
    """``token_reserve.lua``: whether the tokens are held, and what the day has used and held
    (after this submission when held, before it when not)."""

    held: bool
    used: int


def token_reserve(reply: Any) -> TokenHold:
    held, used = reply
    return TokenHold(held=int(held) == 1, used=int(used))
