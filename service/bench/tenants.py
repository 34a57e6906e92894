"""The `tenants` scenario's load: many accounts on one key, a few of them busy, one whose
provider answers 429 for a while, one whose provider is slow.

Accounts are `t_<n>`, each with users u_1..u_<users>, each holding `assignments` records
`t_<n>_<user>_a<k>` (ids unique across accounts: the receiver tells changes apart by id).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.bench.load import record_shapes
from service.sim.lms import SimLMS
from service.sim.records import remote_user_id

PROVIDER_429_RETRY_AFTER = 30  # seconds, as the provider in the issue answered, again and again


@dataclass(frozen=True, slots=True)
class Tenant:
    account_id: str
    records: tuple[tuple[str, str], ...]  # (user id, assignment id), changed in turn


def seed_tenants(lms: SimLMS, accounts: int, users: int, assignments: int) -> list[Tenant]:
    """`accounts` accounts of `users` users with `assignments` realistic records each,
    written straight into the simulator (as `load.seed_users` does for one account)."""
    shapes = record_shapes(assignments)
    tenants = []
    for n in range(1, accounts + 1):
        account_id = f"t_{n}"
        account = lms.accounts.setdefault(account_id, {})
        records = []
        for u in range(1, users + 1):
            user_id = f"u_{u}"
            held = account.setdefault(user_id, {})
            for k in range(assignments):
                record = dict(shapes[k % len(shapes)])
                record["id"] = f"{account_id}_{user_id}_a{k + 1}"
                record["user_id"] = user_id
                record["remote_user_id"] = remote_user_id(user_id)
                held[record["id"]] = record
                records.append((user_id, record["id"]))
        tenants.append(Tenant(account_id, tuple(records)))
    return tenants


def tenant_config(
    base: dict[str, Any], tenants: Sequence[Tenant], users: int, account_interval: float
) -> dict[str, Any]:
    """`base` (a Bench service config) reading every tenant through its change feed, with
    `adaptive: true`."""
    user_ids = [f"u_{u}" for u in range(1, users + 1)]
    config = dict(base)
    config["accounts"] = [
        {"account_id": t.account_id, "users": user_ids, "strategy": "account"} for t in tenants
    ]
    config["polling"] = {
        **base["polling"],
        "account_interval": f"{account_interval:g}s",
        "adaptive": True,
    }
    return config


def skewed_accounts(
    rng: random.Random, tenants: Sequence[Tenant], count: int, busy: float, busy_share: float
) -> tuple[list[Tenant], set[str]]:
    """`count` changes, each naming the account that makes it: a `busy` fraction of the
    accounts, picked at random, make `busy_share` of them (alike), the others the rest.
    Returns the accounts in order and the busy ones' ids."""
    everyone = list(tenants)
    rng.shuffle(everyone)
    split = max(1, round(len(everyone) * busy))
    hot, rest = everyone[:split], everyone[split:]
    order = [
        rng.choice(rest) if rest and rng.random() >= busy_share else rng.choice(hot)
        for _ in range(count)
    ]
    return order, {t.account_id for t in hot}


async def change_tenants(
    lms: SimLMS, order: Sequence[Tenant], per_second: float
) -> dict[tuple[str, str], tuple[float, str]]:
    """Make the changes of `order` at `per_second`, paced on the clock; each account's goes
    round its records (one is changed again only after all its others). Returns each change
    (assignment id, new updated_at) → (when it was applied, its account)."""
    made: dict[tuple[str, str], tuple[float, str]] = {}
    turn: dict[str, int] = {}
    start = time.time()
    for n, tenant in enumerate(order):
        wait = start + n / per_second - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        k = turn[tenant.account_id] = (turn.get(tenant.account_id, -1) + 1) % len(tenant.records)
        user_id, assignment_id = tenant.records[k]
        record = lms.accounts[tenant.account_id][user_id][assignment_id]
        progress = (record.get("progress") or 0) % 99 + 1
        applied = time.time()
        changed = lms.update_assignment(
            tenant.account_id, user_id, assignment_id, progress=progress
        )
        made[(assignment_id, changed["updated_at"])] = (applied, tenant.account_id)
    return made


async def provider_429s(lms: SimLMS, account_id: str, seconds: float) -> tuple[float, float]:
    """The account's provider answers every request 429 (with `provider_errors`, as StackOne
    passes it on) for `seconds`: forced faults kept topped up, then taken away. Returns when
    it started and ended."""
    spec = {
        "status": 429,
        "provider_errors": True,
        "retry_after": PROVIDER_429_RETRY_AFTER,
        "account_id": account_id,
    }
    start = time.time()
    lms.faults.apply_json({"forced": [spec] * 4}, start)
    while time.time() < start + seconds:
        waiting = sum(1 for f in lms.faults.forced if f.get("account_id") == account_id)
        if waiting < 4:
            lms.faults.apply_json({"forced": [spec] * (4 - waiting)}, time.time())
        await asyncio.sleep(0.05)
    lms.faults.forced = [f for f in lms.faults.forced if f.get("account_id") != account_id]
    return start, time.time()
