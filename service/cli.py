"""`lms-webhooks` commands. Exit codes: 0 success, 2 usage or configuration error, 1 failure."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import sys
from collections.abc import Callable, Sequence

import structlog
from redis.exceptions import RedisError

from service import __version__, startup_signals, tracing
from service.app import Role, Service
from service.config import Settings, load_settings
from service.errors import ConfigError
from service.logs import configure_logging
from service.metrics import Metrics
from service.operations import DEAD_LETTERS_LIMIT, Operations
from service.reading.plan import feed_bounds, plan
from service.reading.planner import completions_cost, demand_of_config
from service.store.connect import connect
from service.store.stores import Stores

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# a stop (up to STOP_TIMEOUT) and the last spans' export stay within a supervisor's 15 s
TRACING_FLUSH_SECONDS = 3.0

log = structlog.get_logger("service")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lms-webhooks", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lms-webhooks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run the service")
    run.add_argument("--config", required=True, help="YAML config file")
    run.add_argument("--role", choices=["all", "poller", "dispatcher"], default="all")

    demo = commands.add_parser("demo", help="everything embedded: see signed events arrive")
    demo.add_argument("--duration", type=float, default=None, help="stop after S seconds")

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("--config", required=True)

    replay = commands.add_parser("replay", help="queue dead letters again, same event ids")
    replay.add_argument("--config", required=True)
    replay.add_argument("--endpoint", required=True, help="endpoint id")
    replay.add_argument("--id", action="append", dest="ids", help="event id (repeat; none: all)")

    letters = commands.add_parser("dead-letters", help="list an endpoint's dead letters (JSON)")
    letters.add_argument("--config", required=True)
    letters.add_argument("--endpoint", required=True, help="endpoint id")
    letters.add_argument("--limit", type=int, default=100)

    sim = commands.add_parser("simulate-lms", help="the simulated StackOne LMS API")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--accounts", type=int, default=1)
    sim.add_argument("--users", type=int, default=10)
    sim.add_argument("--assignments", type=int, default=5)
    sim.add_argument("--rate-limit", type=float, default=None, help="requests per minute")
    sim.add_argument("--churn", type=float, default=0.0, help="random changes per second")
    sim.add_argument("--api-key", default="sim_key")

    receive = commands.add_parser("receive", help="a local receiver that verifies signatures")
    receive.add_argument("--secret", required=True, help="whsec_... secret")
    receive.add_argument("--host", default="127.0.0.1")
    receive.add_argument("--port", type=int, default=8091)
    bench = commands.add_parser("bench", help="measure performance against the simulator")
    bench.add_argument(
        "--scenario",
        action="append",
        dest="scenarios",
        help="run only this scenario (repeat); default: all",
    )
    bench.add_argument(
        "--scale", type=float, default=1.0, help="size factor, e.g. 0.1 for a quick check"
    )
    bench.add_argument("--output", help="also write the JSON report to this file")
    return parser


def tune_gc() -> None:
    """Fewer cyclic collections: every page allocates thousands of small dicts, and at the
    default threshold the collector took a tenth of the CPU of a busy poller. What start-up
    built lives as long as the process: frozen, it is never scanned again."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


# Signals a supervisor sends to ask for a reload or a log reopen. Their default action ends
# the process with no log line and no leases handed back, which looks like a crash; the
# config is read once at start, so they are said to be ignored and the service runs on.
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def _signal_ignored(sig: signal.Signals) -> None:
    log.warning(
        "signal_ignored",
        signal=sig.name,
        detail="the config is not reloaded: restart the process to apply a change",
    )


async def serve(settings: Settings, role: Role) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully; SIGHUP, SIGUSR1 and SIGUSR2 are
    logged and otherwise ignored."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for sig in IGNORED_SIGNALS:
        loop.add_signal_handler(sig, _signal_ignored, sig)
    if startup_signals.arrived():  # asked to stop while starting: nothing to start or hand back
        log.info("service_stopped", detail="SIGTERM while starting")
        return
    tracing.start(settings.tracing, role)
    service = Service(settings, role=role)
    await service.start()
    tune_gc()
    try:
        await stop.wait()
    finally:
        await service.stop()
        # the spans of the last reads and deliveries go out before the process ends
        await asyncio.to_thread(tracing.stop, TRACING_FLUSH_SECONDS)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.log.level, settings.log.format, settings.secret_values(), final=True)
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        runner.run(serve(settings, args.role))
    return EXIT_OK


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (it is a dependency; the standard loop otherwise)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - e.g. Windows
        return None
    return uvloop.new_event_loop


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}s"


def _check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    users = sum(len(a.listed_users) for a in settings.accounts)
    listed = sum(a.all_users for a in settings.accounts)
    every = f" (and every user of {listed} account(s))" if listed else ""
    print(
        f"config ok: {len(settings.accounts)} account(s), {users} user(s){every}, "
        f"{len(settings.endpoints)} endpoint(s)"
    )
    estimate = plan(demand_of_config(settings))
    feeds = f"every {_seconds(estimate.feed_interval)}"
    if settings.polling.adaptive:
        fastest, slowest = feed_bounds(estimate, settings.polling)
        feeds = (
            f"every {_seconds(fastest)} (busy) to {_seconds(slowest)} (quiet) by activity, "
            f"{_seconds(estimate.feed_interval)} on average"
        )
    cadence = (
        f"per_user every {_seconds(estimate.user_interval)} ({estimate.users} users), "
        f"account feeds {feeds} ({estimate.feeds} accounts), "
        f"listings every {_seconds(estimate.listing_interval)} ({estimate.listings} accounts)"
    )
    budget = (
        f"{estimate.needed_per_minute:.0f} requests a minute needed, "
        f"{estimate.allowed_per_minute:.0f} planned of stackone.max_requests_per_minute "
        f"{settings.stackone.max_requests_per_minute}"
    )
    completions = completions_cost(settings.accounts, estimate)
    if completions.accounts:
        budget += (
            f", of which completions {completions.per_minute:.0f} "
            f"({completions.accounts} account(s): one more feed read per account, "
            "one more request per user poll)"
        )
    unknown = " (users: all accounts' users polled one by one not counted: not listed yet)"
    if any(a.all_users and not a.uses_feed for a in settings.accounts):
        budget += unknown
    if estimate.fits:
        print(f"budget: {budget}; {cadence}")
    else:
        print(
            f"warning: the configured cadences do not fit the budget: {budget}; "
            f"stretched to fit: {cadence}",
            file=sys.stderr,
        )
    return EXIT_OK


async def _dead_letter_command(settings: Settings, args: argparse.Namespace) -> int:
    """`replay` and `dead-letters`: the same operations the admin API calls."""
    if settings.endpoint(args.endpoint) is None:
        print(f"unknown endpoint {args.endpoint!r}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "dead-letters" and not 1 <= args.limit <= DEAD_LETTERS_LIMIT:
        print(f"--limit must be from 1 to {DEAD_LETTERS_LIMIT}", file=sys.stderr)
        return EXIT_USAGE
    stores = Stores.on(connect(settings.redis_url), settings)
    operations = Operations(settings, stores, Metrics())
    try:
        if args.command == "replay":
            queued = await operations.replay(args.endpoint, args.ids)
            print(json.dumps({"endpoint": args.endpoint, "queued": queued}))
        else:
            letters = await operations.dead_letters(args.endpoint, args.limit)
            print(json.dumps(letters.model_dump(mode="json"), indent=2))
    finally:
        await stores.redis.aclose()
    return EXIT_OK


def _until_interrupted(coro: object) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)  # type: ignore[arg-type]
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":  # only the service keeps a SIGTERM that comes while it starts
        startup_signals.restore()
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check-config":
            return _check_config(args)
        if args.command in ("replay", "dead-letters"):
            settings = load_settings(args.config)
            configure_logging("warning", "console", settings.secret_values())
            return asyncio.run(_dead_letter_command(settings, args))
        if args.command == "demo":
            from service.sim.demo import run_demo

            return _until_interrupted(run_demo(args.duration))
        if args.command == "simulate-lms":
            from service.sim.lms import run_standalone

            sizes = (args.accounts, args.users, args.assignments)
            return _until_interrupted(
                run_standalone(
                    args.host, args.port, *sizes, args.rate_limit, args.churn, api_key=args.api_key
                )
            )
        if args.command == "bench":
            from service.bench.cli import bench_command

            return bench_command(args.scenarios, args.scale, args.output)
        if args.command == "receive":
            from service.sim.receiver import run_standalone_receiver

            if not args.secret.startswith("whsec_"):
                print("receive: --secret must look like whsec_<base64>", file=sys.stderr)
                return EXIT_USAGE
            return _until_interrupted(run_standalone_receiver(args.secret, args.host, args.port))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, RedisError) as e:  # e.g. a port already in use, Redis unreachable
        print(f"lms-webhooks {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
