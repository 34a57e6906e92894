"""The commands as a user runs them: demo, simulate-lms, receive, run's signals."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from http.cookiejar import CookieJar
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from service.sim.lms import SimLMS
from service.sim.receiver import Receiver
from tests.helpers import SECRET, RunProcess, wait_until
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def _as_in_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a suite run in the background (`make test &`,
    nohup) hands its children SIGINT ignored, which would leave the SIGINT tests hanging."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CI": "1"},
        preexec_fn=_as_in_a_terminal,
    )


async def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def console_overview(url: str, token: str) -> str:
    """Sign in to the console as a person would (the form, then the overview it leads to)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    form = urllib.parse.urlencode({"token": token}).encode()
    with opener.open(f"{url}/login", data=form, timeout=10) as response:
        assert response.url == url  # redirected to the overview
        return str(response.read().decode())


@pytest.mark.slow
def test_demo_shows_verified_completions_within_30_seconds() -> None:
    started = time.monotonic()
    proc = start("demo", "--duration", "10")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        # the demo opens with the console's address and this run's admin token
        shown = re.fullmatch(r"Operator console: (http://\S+/ui)  \(admin token: (\S+)\)\n", first)
        assert shown is not None, first
        overview = console_overview(shown[1], shown[2])
        assert "hr-demo" in overview and shown[2] not in overview
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 30
    lines = out.splitlines()
    completed = [line for line in lines if "assignment.completed" in line]
    assert completed and all("verified" in line for line in completed)
    assert not [line for line in lines if "INVALID" in line]
    assert "signatures verified" in lines[-1]


async def test_simulate_lms_serves_the_unified_api() -> None:
    port = free_port()
    proc = start("simulate-lms", "--port", str(port), "--users", "2", "--assignments", "3")
    try:
        await wait_for_port(port)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/unified/lms/users/u_1/assignments"
            auth = {"Authorization": "Basic " + base64.b64encode(b"sim_key:").decode()}
            async with http.get(url, headers={**auth, "x-account-id": "acc_1"}) as response:
                assert response.status == 200
                body = await response.json()
            async with http.get(url, headers={"x-account-id": "acc_1"}) as response:
                assert response.status == 401
        assert len(body["data"]) == 3 and body["next"] is None
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


async def test_receive_verifies_and_prints_events() -> None:
    port = free_port()
    proc = start("receive", "--secret", SECRET, "--port", str(port))
    body = '{"id":"evt_1","type":"assignment.completed","data":{"user_id":"u_1"}}'
    headers = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": Webhook(SECRET).sign("evt_1", datetime.now(UTC), body),
        "content-type": "application/json",
    }
    try:
        await wait_for_port(port)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/hooks", data=body, headers=headers) as r:
                assert r.status == 200
            bad = {**headers, "webhook-signature": "v1,AAAA"}
            async with http.post(f"http://127.0.0.1:{port}/hooks", data=body, headers=bad) as r:
                assert r.status == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "✓" in out and "assignment.completed" in out and "✗" in out


def test_receive_rejects_a_malformed_secret() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service", "receive", "--secret", "plain"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2 and "whsec_" in proc.stderr


async def test_run_logs_and_ignores_reload_signals(
    redis_server: RedisServer,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    """A supervisor's reload signal (SIGHUP) or SIGUSR1/2 ended `run` with no log line and no
    leases handed back, as a crash does. They are logged and the service runs on; SIGTERM
    still stops it gracefully."""
    port = free_port()
    log = tmp_path / "run.log"
    process = RunProcess(redis_server.url, lms[1], receiver[1], log)
    process.env["HTTP_PORT"] = str(port)
    process.start()
    assert process.process is not None

    async def healthy() -> bool:
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    return response.status == 200
        except aiohttp.ClientError:
            return False

    def signals_logged() -> int:
        return log.read_text().count('"signal_ignored"')

    try:
        await wait_until(healthy, 20, "the service to answer /healthz")
        for n, sig in enumerate((signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2), start=1):
            process.process.send_signal(sig)
            await wait_until(lambda n=n: signals_logged() == n, 10, f"{sig.name} logged")
            assert process.process.poll() is None and await healthy()
        lines = [line for line in log.read_text().splitlines() if '"signal_ignored"' in line]
        for line, name in zip(lines, ("SIGHUP", "SIGUSR1", "SIGUSR2"), strict=True):
            assert f'"{name}"' in line and "restart" in line
    finally:
        assert process.stop() == 0
    assert "Traceback" not in log.read_text()
