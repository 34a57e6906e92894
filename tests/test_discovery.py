"""`users: all`: the account's user listing decides who is tracked; users who join are
baselined and followed, users who leave are forgotten without `removed` events; a listing
that fails changes nothing."""

from __future__ import annotations

import pytest
import structlog
from redis.asyncio import Redis

from service.changes import events as ev
from service.config import parse_settings
from service.errors import ConfigError
from service.sim.lms import SimLMS
from service.sim.receiver import Receiver
from service.store import keys
from tests.helpers import ACCOUNT, API_KEY, as_json, driven, of_type, seed_user
from tests.redis_server import RedisServer
from tests.test_feed import feed_settings, paths

Rx = tuple[Receiver, str]
DISCOVERY = {"discovery_interval": "2s", "full_resync_interval": "10s"}


async def tracked(redis: Redis) -> set[str]:
    return await redis.smembers(keys.discovered_users(ACCOUNT))


@pytest.mark.parametrize("strategy", ["per_user", "account"])
async def test_users_who_join_are_followed_and_users_who_leave_are_forgotten(
    strategy: str, redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    for user in ("u_1", "u_2", "u_3"):
        seed_user(sim, user, 2)
    settings = feed_settings(redis_server.url, lms_url, rx_url, "all", strategy, polling=DISCOVERY)
    async with driven(settings, sim) as service:
        await service.baseline()
        assert await tracked(redis) == {"u_1", "u_2", "u_3"}
        await service.step(0.5)  # every user's baseline taken
        assert rx.events == []
        sim.set_user(ACCOUNT, "u_4", name="New Hire")
        seed_user(sim, "u_4", 2)
        sim.set_user(ACCOUNT, "u_3", active=False)
        await service.step(2.0)  # the listing again (filter[updated_after]): u_4 in, u_3 out
        assert await tracked(redis) == {"u_1", "u_2", "u_4"}
        await service.step(0.5)  # u_4's baseline: silent
        assert rx.events == []
        sim.progress(ACCOUNT, "u_4", "u_4_a1", 100)
        sim.remove_user(ACCOUNT, "u_2")  # gone: only a complete listing tells
        await service.step(0.5)
        assert [e.data["user_id"] for e in of_type(rx.events, ev.COMPLETED)] == ["u_4"]
        service.clock.advance(10.0)  # full_resync_interval on: a complete listing
        await service.step(0.0)
        assert await tracked(redis) == {"u_1", "u_4"}
        for user in ("u_2", "u_3"):  # forgotten: no state, no snapshots, no schedule
            assert not await redis.exists(
                keys.snapshots(ACCOUNT, user), keys.user_state(ACCOUNT, user)
            )
            assert await redis.zscore(keys.POLL_DUE, keys.user_member(ACCOUNT, user)) is None
        sim.clear_requests()
        await service.step(1.0)
        await service.step(1.0)
        requested = paths(sim)
    assert of_type(rx.events, ev.REMOVED) == []  # leaving is not an assignment event
    assert not any("/users/u_2/" in p or "/users/u_3/" in p for p in requested)


async def test_a_listing_without_data_changes_nothing(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    _, rx_url = receiver
    seed_user(sim, "u_1", 1)
    seed_user(sim, "u_2", 1)
    settings = feed_settings(
        redis_server.url, lms_url, rx_url, "all", "per_user", polling=DISCOVERY
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        assert await tracked(redis) == {"u_1", "u_2"}
        sim.remove_user(ACCOUNT, "u_2")
        service.clock.advance(10.0)  # a complete listing is due: its page has no `data`
        sim.faults.forced = [{"wrong_shape": True}]
        await service.step(0.0)
        assert await tracked(redis) == {"u_1", "u_2"}
        [account] = as_json(await service.service.operations.accounts())
        assert account["listing"]["failures"] == 1
        assert "data" in account["listing"]["last_error"]
        await service.step(5.0)  # retried: the listing is complete now
        assert await tracked(redis) == {"u_1"}


@pytest.mark.parametrize(
    ("account", "polling", "path"),
    [
        ({"users": "all", "strategy": "acount"}, {}, "accounts.0.strategy"),
        ({"users": "al"}, {}, "accounts.0.users"),
        (
            {"users": "all", "strategy": "account"},
            {"account_interval": 0},
            "polling.account_interval",
        ),
        ({"users": "all"}, {"discovery_interval": "0s"}, "polling.discovery_interval"),
    ],
)
def test_config_mistakes_name_the_key(
    account: dict[str, str], polling: dict[str, object], path: str
) -> None:
    data = {
        "stackone": {"api_key": API_KEY},
        "accounts": [{"account_id": ACCOUNT, **account}],
        "polling": polling,
    }
    with pytest.raises(ConfigError) as caught:
        parse_settings(data)
    assert caught.value.path.startswith(path), caught.value


async def test_listed_users_whose_ids_no_request_can_name_are_skipped(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    """A listed user `..` was tracked and polled as `/unified/lms/users/../assignments`,
    which the HTTP client resolves to the whole account's route: every assignment of the
    account was sent as created under user `..`."""
    sim, lms_url = lms
    rx, rx_url = receiver
    unusable = ["..", ".", "x" * 257]
    for user in ["u_1", *unusable]:
        seed_user(sim, user, 1)
    settings = feed_settings(
        redis_server.url,
        lms_url,
        rx_url,
        "all",
        "per_user",
        polling={**DISCOVERY, "emit_on_first_sync": True},
    )
    async with driven(settings, sim) as service:
        with structlog.testing.capture_logs() as logs:
            await service.baseline()
            await service.step(0.5)
        assert await tracked(redis) == {"u_1"}
        metrics = service.service.metrics.render().decode()
    assert 'lms_webhooks_records_skipped_total{reason="user_without_id"} 3.0' in metrics
    assert sum(e["count"] for e in logs if e["event"] == "users_skipped") == 3  # per page
    assert "/unified/lms/assignments" not in paths(sim)
    assert {e.data["user_id"] for e in rx.events} == {"u_1"}
