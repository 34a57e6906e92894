"""Every store on one Redis client, built once by whoever runs the service or a tool."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from service.config import Settings
from service.store.console_sessions import SignedOutSessions
from service.store.directory import AccountDirectory
from service.store.endpoints import EndpointStore
from service.store.feeds import FeedStore
from service.store.leases import (
    Leases,
    account_listing_leases,
    discovery_leases,
    feed_leases,
    user_leases,
)
from service.store.limits import SharedLimiter
from service.store.linked_accounts import LinkedAccountStore
from service.store.log import DeliveryLog
from service.store.log_policy import LogPolicy
from service.store.polls import PollStore
from service.store.queue import EventQueue
from service.store.read_costs import ReadCosts
from service.store.users import TrackedUsers


@dataclass(frozen=True)
class Stores:
    redis: Redis
    queue: EventQueue
    endpoints: EndpointStore
    polls: PollStore
    feeds: FeedStore
    read_costs: ReadCosts
    leases: Leases  # users polled one by one
    feed_leases: Leases
    discovery_leases: Leases
    account_listing_leases: Leases  # the key's linked accounts (`account_discovery`)
    users: TrackedUsers
    linked: LinkedAccountStore  # what account discovery found
    accounts: AccountDirectory  # which accounts are read, and how
    limiter: SharedLimiter
    log: DeliveryLog  # the delivery log: events and attempts, for the admin API
    signed_out: SignedOutSessions  # the console's

    @classmethod
    def on(cls, redis: Redis, settings: Settings, clock: Callable[[], float] = time.time) -> Stores:
        log = LogPolicy.of(settings.delivery)
        feeds = FeedStore(redis, log)
        linked = LinkedAccountStore(redis)
        accounts = AccountDirectory(linked, settings, clock)
        return cls(
            redis=redis,
            queue=EventQueue(redis),
            endpoints=EndpointStore(redis),
            polls=PollStore(redis, log),
            feeds=feeds,
            read_costs=ReadCosts(redis),
            leases=user_leases(redis, clock=clock),
            feed_leases=feed_leases(redis, clock=clock),
            discovery_leases=discovery_leases(redis, clock=clock),
            account_listing_leases=account_listing_leases(redis, clock=clock),
            users=TrackedUsers(redis, settings, feeds, accounts),
            linked=linked,
            accounts=accounts,
            limiter=SharedLimiter(redis),
            log=DeliveryLog(redis, log, [e.id for e in settings.endpoints]),
            signed_out=SignedOutSessions(redis),
        )
