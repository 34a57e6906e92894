"""What one read reports when it ends (a user's poll, an account's feed or user listing):
the runner hands it on to whoever observes reads (the planner learns what reads cost), so
neither has to know the other."""

from __future__ import annotations

from typing import Protocol


class ReadResult(Protocol):
    full: bool
    pages: int
    changes: int
    events: int
