"""What a read does with its lease when it commits (or gives up): the member is due again at
a time (`EndLease`), or the read goes on and keeps it (`KeepLease`).

The readers say which; only the store turns it into a schedule's score
(`scripts.outcome_score`): a due time in ms, or a hold that lease.lua reads as "this lease,
LEASE_SECONDS longer on Redis' clock". A reader never sees a score.
"""

from __future__ import annotations

from dataclasses import dataclass

# A dead process's work is taken over this soon (whether it had started or was only claimed),
# so its users are polled again within about an interval; live work extends its lease every
# third of it (the scheduler's heartbeat, all of a process's leases in one script call), so a
# process has two seconds of stall to spare before it loses one (a lost lease wastes a read,
# never repeats a commit: the commit is fenced).
LEASE_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class EndLease:
    """The work is over: the member is due again at `due` (epoch seconds, on the clock of the
    process that writes it), unless a read now was asked for meanwhile (due_now)."""

    due: float


@dataclass(frozen=True, slots=True)
class KeepLease:
    """A flush of a read that goes on: the lease stays, LEASE_SECONDS longer on Redis'
    clock, under a new token (the commit returns it)."""


LeaseOutcome = EndLease | KeepLease
