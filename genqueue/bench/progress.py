"""The bench's progress lines, on stderr (the table and the JSON line go to stdout)."""

from __future__ import annotations

import sys


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
