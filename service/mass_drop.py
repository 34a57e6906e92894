"""The guard of every listing that decides who is forgotten (an account's users, the key's
linked accounts): a complete listing that leaves out more than half of what was listed
before (an upstream answering `[]` on a bad day, a provider cut short) forgets nothing
until a second complete listing, at least a while later, agrees. A listing whose members
are held one by one (the linked accounts: a page shifting under a paged listing leaves one
out) forgets a member only when two complete listings, that far apart, both left it out.

Pure: the listing reads and writes the held set and its state; this decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# two complete listings that each leave out more than half agree when the members both leave
# out are this share of the larger of their two sets
AGREEMENT = 0.9


@dataclass(frozen=True, slots=True)
class DropDecision:
    # when the first such listing ran (ms): held now; 0: not held, a hold if any ends;
    # None: not a complete listing, the state's as it was
    mass_drop_ms: int | None
    drop: list[str]  # forgotten now
    held: bool = False  # `drop` is held: nothing is forgotten now
    hold_new: bool = False  # and it is the set a second listing must agree on (store it)
    confirmed: bool = False  # a second listing agreed: `drop` is what both left out
    # members left out for the first time, each held until a second listing agrees
    # (decide_left_out only)
    missing: list[str] = field(default_factory=list)


def is_mass_drop(drop: list[str], listed: int) -> bool:
    """More than half of the `listed` members would go."""
    return len(drop) * 2 > listed


def decide_drop(
    drop: list[str],
    listed: int,
    *,
    full: bool,
    first_ms: int | None,
    held: set[str],
    now_ms: int,
    agree_after_ms: int,
) -> DropDecision:
    """What a listing forgets of the members it left out (`drop`, of `listed` known).

    A complete listing that leaves out more than half forgets nobody until a second complete
    listing, at least `agree_after_ms` after the first (`first_ms`), agrees: both leave out
    nearly the same members (AGREEMENT of the larger set; `held`: the first one's), and then
    only those both left out go: forgotten members' changes would be lost, and they would
    come back baselined silently. Listings that disagree (an empty answer, then one cut
    short) hold again, from the later one."""
    if not full:
        return DropDecision(None, drop)
    if not is_mass_drop(drop, listed):
        return DropDecision(0, drop)
    first = first_ms or 0
    if first and now_ms - first >= agree_after_ms:
        agreed = [member for member in drop if member in held]
        if agreed and len(agreed) >= AGREEMENT * max(len(held), len(drop)):
            return DropDecision(0, agreed, confirmed=True)
        first = 0  # they disagree (or the first one's set ran out): this one is a first
    return DropDecision(first or now_ms, drop, held=True, hold_new=not first)


def decide_left_out(
    drop: list[str],
    listed: int,
    since: Mapping[str, int],
    *,
    full: bool,
    first_ms: int | None,
    held: set[str],
    now_ms: int,
    agree_after_ms: int,
) -> DropDecision:
    """As decide_drop, for members held one by one: a member a complete listing leaves out
    is `missing` (not read, its state kept), and forgotten only when a complete listing at
    least `agree_after_ms` after the first that left it out (`since`: member → when) leaves
    it out too. Whether a listing drops more than half at once counts the members it leaves
    out for the first time, of those not missing already; such a listing changes nothing."""
    new = [member for member in drop if not since.get(member)]
    decision = decide_drop(
        new,
        listed - (len(drop) - len(new)),
        full=full,
        first_ms=first_ms,
        held=held,
        now_ms=now_ms,
        agree_after_ms=agree_after_ms,
    )
    if decision.held or not full:
        return decision
    due = [m for m in drop if since.get(m) and now_ms - since[m] >= agree_after_ms]
    if decision.confirmed:
        return DropDecision(0, sorted({*decision.drop, *due}), confirmed=True)
    return DropDecision(decision.mass_drop_ms, due, missing=new)
