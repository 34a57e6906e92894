"""`lms-webhooks demo`: a simulated LMS, the in-memory store, a verifying receiver, live.

Employees' training assignments progress and complete in the simulated LMS, in the
accounts the key's project has linked (two customers' LMS). The config names no account:
account discovery lists the linked accounts (`GET /accounts`) and follows each one, every
user its user listing names, through the account's change feed (`users: all`,
`strategy: auto`), its completion records too (an elective course nobody assigned shows up
only there). A third customer links its LMS a little later and is followed from then on,
without a restart. The service detects each change and delivers signed webhooks; the
receiver verifies every signature and the table shows the events as they arrive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from service.app import Service
from service.config import Settings, parse_settings
from service.logs import configure_logging
from service.sim.lms import SimLMS, start_sim_server
from service.sim.receiver import ReceivedEvent, Receiver, start_receiver_server

# the linked accounts, each a customer's LMS, found by discovery
ACCOUNT = "acc_demo"
USERS = ("emp_alice", "emp_bob")
FEED_ACCOUNT = "acc_feed"
FEED_USERS = ("emp_carol", "emp_dan")
LATE_ACCOUNT = "acc_late"  # linked while the demo runs
LATE_USERS = ("emp_erin",)
STEP_SECONDS = 2.0
_COLOURS = {
    "assignment.completed": "bold green",
    "assignment.created": "cyan",
    "assignment.status_changed": "yellow",
    "assignment.progress_changed": "blue",
    "assignment.due_date_changed": "magenta",
    "assignment.removed": "red",
    "completion.created": "bold green",
    "completion.updated": "green",
}


def demo_settings(lms_url: str, receiver_url: str, secret: str, admin_token: str) -> Settings:
    return parse_settings(
        {
            "redis_url": "memory://",
            "stackone": {"base_url": lms_url, "api_key": "demo_key", "page_size": 50},
            # no account listed: every linked account the key reaches is found and followed
            "accounts": [],
            "account_discovery": {
                "enabled": True,
                "interval": "3s",
                "defaults": {
                    "users": "all",
                    "strategy": "auto",
                    "track": ["assignments", "completions"],
                },
            },
            "polling": {
                "interval": "1s",
                "account_interval": "1s",
                "discovery_interval": "2s",
                "overlap": "5s",
            },
            "endpoints": [
                {"id": "hr-demo", "url": f"{receiver_url}/hooks/lms", "secret": secret},
            ],
            "delivery": {"allow_http": True, "allow_private_addresses": True},
            # the admin token turns the operator console on; loopback only
            "http": {"listen": "127.0.0.1:0", "admin_token": admin_token},
            "log": {"level": "error", "format": "console"},
        }
    )


COURSES = ["Security Awareness 2026", "Code of Conduct", "Data Protection Basics"]


def seed(lms: SimLMS) -> None:
    """Each employee starts with courses assigned and not started: the service's baseline."""
    lms.link_account(ACCOUNT, provider="docebo", origin_owner_name="Acme Corp")
    lms.link_account(FEED_ACCOUNT, provider="cornerstone", origin_owner_name="Globex")
    employees = [(ACCOUNT, user) for user in USERS] + [(FEED_ACCOUNT, u) for u in FEED_USERS]
    _assign(lms, employees)


def link_late(lms: SimLMS) -> None:
    """A third customer links its LMS (StackOne's Hub): discovery finds it within an
    interval, and it is baselined silently."""
    lms.link_account(LATE_ACCOUNT, provider="docebo", origin_owner_name="Initech")
    _assign(lms, [(LATE_ACCOUNT, user) for user in LATE_USERS])


def _assign(lms: SimLMS, employees: list[tuple[str, str]]) -> None:
    for account, user in employees:
        for n, title in enumerate(COURSES, 1):
            lms.put_assignment(
                account,
                user,
                {
                    "id": f"{user}_c{n}",
                    "learning_object_external_reference": title,
                    "due_date": "2026-12-31T00:00:00.000Z",
                },
            )
            lms.progress(account, user, f"{user}_c{n}", 0)


def scenario(lms: SimLMS) -> list[Callable[[], object]]:
    """What happens in the LMS, one step every STEP_SECONDS. A completion comes second, so
    even a short run (or a slow machine) shows one."""
    a, b = USERS
    c, d = FEED_USERS
    (e,) = LATE_USERS
    return [
        lambda: lms.progress(ACCOUNT, a, f"{a}_c1", 40),
        lambda: lms.progress(FEED_ACCOUNT, d, f"{d}_c3", 100),
        lambda: link_late(lms),
        lambda: lms.progress(FEED_ACCOUNT, c, f"{c}_c1", 60),
        lambda: lms.progress(ACCOUNT, b, f"{b}_c2", 25),
        # a course nobody assigned, taken by choice: only its completion record shows it
        lambda: lms.put_completion(
            FEED_ACCOUNT,
            d,
            {
                "id": f"{d}_elective",
                "learning_object_external_reference": "Negotiation Skills (elective)",
                "certificate_url": f"https://lms.example.com/certificates/{d}_elective",
            },
        ),
        lambda: lms.progress(LATE_ACCOUNT, e, f"{e}_c2", 100),
        lambda: lms.progress(ACCOUNT, a, f"{a}_c1", 100),
        lambda: lms.put_assignment(
            ACCOUNT,
            a,
            {
                "id": f"{a}_c4",
                "learning_object_external_reference": "Fire Safety",
                "due_date": "2027-01-15T00:00:00.000Z",
            },
        ),
        lambda: lms.update_assignment(ACCOUNT, b, f"{b}_c3", due_date="2027-02-01T00:00:00.000Z"),
        lambda: lms.progress(ACCOUNT, b, f"{b}_c2", 100),
        lambda: lms.progress(ACCOUNT, a, f"{a}_c4", 100),
        lambda: lms.progress(FEED_ACCOUNT, c, f"{c}_c1", 100),
    ]


def render(events: list[ReceivedEvent], started: float, status: str) -> Group:
    table = Table(title="Webhooks received by the HR system (signatures verified)", expand=True)
    for name in (
        "t+s",
        "verified",
        "type",
        "account/user",
        "course",
        "seq",
        "changed",
        "status",
    ):
        table.add_column(name, no_wrap=name in ("type", "t+s"))
    for event in events[-18:]:
        data = event.data
        current = data.get("assignment") or data.get("completion") or {}
        # an assignment's status, or a completion's result
        status_value = (current.get("status") or current.get("result") or {}).get("value")
        progress = current.get("progress")
        table.add_row(
            f"{event.received_at - started:5.1f}",
            "✓" if event.verified else "✗",
            Text(event.type or "?", style=_COLOURS.get(event.type or "", "")),
            f"{data.get('account_id')}/{data.get('user_id')}",
            str(
                current.get("learning_object_external_reference")
                or data.get("assignment_id")
                or data.get("completion_id")
            ),
            str(data.get("sequence")),
            ", ".join(data.get("changed_fields", [])[:4]),
            f"{status_value} {progress}%" if progress is not None else str(status_value),
        )
    return Group(Text(status, style="dim"), table)


async def run_demo(duration: float | None = None) -> None:
    configure_logging("error", "console")
    console = Console()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    admin_token = secrets.token_urlsafe(18)  # this run's only: printed for the newcomer
    lms = SimLMS(api_key="demo_key")
    seed(lms)
    receiver = Receiver([secret])
    sim_runner, lms_url = await start_sim_server(lms)
    rx_runner, rx_url = await start_receiver_server(receiver)
    service = Service(demo_settings(lms_url, rx_url, secret, admin_token))
    await service.start()
    started = time.time()
    steps = scenario(lms)
    interactive = console.is_terminal and not os.environ.get("CI")
    # first, so that it stays above the live table: where to click through the events
    console.print(
        f"[bold]Operator console:[/] {service.http_url}/ui  (admin token: {admin_token})",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"[bold]lms-webhooks demo[/]: simulated LMS at {lms_url}, receiver at {rx_url}, "
        f"service API at {service.http_url} (metrics: {service.http_url}/metrics). Ctrl-C ends it."
    )
    console.print(
        f"No account in the config: discovery finds the linked ones ({ACCOUNT}, "
        f"{FEED_ACCOUNT}) and reads each one's change feed for every user it lists, and a "
        "second feed for their completion records (track: \\[assignments, completions]): "
        f"learning nobody assigned shows up too. {LATE_ACCOUNT} is linked a few seconds in "
        "and followed from then on."
    )
    if not interactive:
        receiver.on_event = lambda e: print(_line(e, started), flush=True)
    try:
        await _drive(steps, receiver, started, duration, console if interactive else None)
    finally:
        await service.stop(timeout=2.0)
        await rx_runner.cleanup()
        await sim_runner.cleanup()
    verified = sum(e.verified for e in receiver.received)
    console.print(f"{len(receiver.events)} events delivered, {verified} signatures verified.")


def _line(event: ReceivedEvent, started: float) -> str:
    data = event.data
    return (
        f"t+{event.received_at - started:5.1f}s {'verified' if event.verified else 'INVALID '} "
        f"{event.type:<30} {data.get('account_id')}/{data.get('user_id')}/"
        f"{data.get('assignment_id') or data.get('completion_id')} "
        f"seq={data.get('sequence')} changed={','.join(data.get('changed_fields', []))}"
    )


async def _drive(
    steps: list[Callable[[], object]],
    receiver: Receiver,
    started: float,
    duration: float | None,
    console: Console | None,
) -> None:
    """Apply one scenario step every STEP_SECONDS and keep the view fresh until the end."""
    step = 0
    next_step = started + STEP_SECONDS * 1.5  # the first polls take the baseline first

    async def tick(update: Callable[[str], None] | None) -> None:
        nonlocal step, next_step
        while duration is None or time.time() - started < duration:
            if step < len(steps) and time.time() >= next_step:
                steps[step]()
                step, next_step = step + 1, time.time() + STEP_SECONDS
            if update:
                left = f"{len(steps) - step} changes to come" if step < len(steps) else "all done"
                update(f"scenario: {left}; {len(receiver.events)} events received")
            await asyncio.sleep(0.2)

    if console is None:
        await tick(None)
        return
    with Live(render([], started, ""), console=console, refresh_per_second=5) as live:

        def update(status: str) -> None:
            live.update(render(receiver.received, started, status))

        await tick(update)


def main() -> None:  # pragma: no cover - `python -m service.sim.demo`
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(float(sys.argv[1]) if len(sys.argv) > 1 else None))


_: Callable[..., Awaitable[None]] = run_demo
