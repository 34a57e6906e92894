"""Filling the simulated LMS with realistic records, and moving them on as learners would."""

from __future__ import annotations

import random

from service.sim.listing import Record, iso_ms
from service.sim.records import STATUS_SOURCE, LMSRecords

__all__ = ["churn_once", "seed"]


def seed(lms: LMSRecords, accounts: int, users: int, assignments: int) -> None:
    """`accounts` accounts acc_1.., each with users u_1.., each with `assignments` records
    of mixed status. Deterministic for a given clock."""
    rng = random.Random(1)
    now = lms.clock()
    day = 86400.0
    for ai in range(1, accounts + 1):
        for ui in range(1, users + 1):
            for _ in range(assignments):
                created = now - rng.uniform(5, 120) * day
                updated = rng.uniform(created, now - 60)
                status = rng.choices(list(STATUS_SOURCE), weights=(35, 35, 30))[0]
                pct = {"pending": 0, "completed": 100}.get(status) or rng.randint(5, 95)
                due = now + rng.uniform(-30, 60) * day if rng.random() < 0.7 else None
                kind = "content" if rng.random() < 0.25 else "course"
                record: Record = {
                    "learning_object_type": {"value": kind, "source_value": kind.upper()},
                    "status": {"value": status, "source_value": STATUS_SOURCE[status]},
                    "progress": pct,
                    "created_at": iso_ms(created),
                    "assigned_at": iso_ms(created),
                    "updated_at": iso_ms(updated),
                    "due_date": iso_ms(due) if due is not None else None,
                    "unified_custom_fields": {"cost_center": f"CC-{rng.randint(100, 999)}"},
                }
                if status == "completed":
                    record["completed_at"] = iso_ms(updated)
                    record["result"] = {"value": "Pass", "source_value": "passed"}
                    record["certificate_url"] = "https://lms.example.com/certificates/seed"
                lms.put_assignment(f"acc_{ai}", f"u_{ui}", record)


def churn_once(lms: LMSRecords, rng: random.Random) -> tuple[str, str, Record] | None:
    """Advance one random unfinished assignment (pending → in_progress → completed), or
    assign a new course when all are done. Returns (account, user, record)."""
    users = [(a, u) for a, us in lms.accounts.items() for u in us]
    if not users:
        return None
    open_ = [
        (a, u, aid)
        for a, u in users
        for aid, rec in lms.accounts[a][u].items()
        if (rec.get("status") or {}).get("value") != "completed"
    ]
    if not open_ or rng.random() < 0.1:
        a, u = rng.choice(users)
        return a, u, lms.put_assignment(a, u, {})
    a, u, aid = rng.choice(open_)
    current = lms.accounts[a][u][aid].get("progress") or 0
    step = rng.randint(10, 50)
    pct = 100 if current + step >= 95 else current + step
    return a, u, lms.progress(a, u, aid, pct)
