"""Prometheus metrics. One registry per service instance, created in the lifecycle and passed in.

Labels are bounded: endpoint ids and event types come from the config, statuses are HTTP codes;
never a user or assignment id.
"""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.changes.detect import Watermark

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 7200)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.upstream_requests = Counter(
            "lms_webhooks_upstream_requests",
            "Upstream API requests by HTTP status (or timeout/error).",
            ["status"],
            registry=r,
        )
        self.upstream_pauses = Counter(
            "lms_webhooks_upstream_pauses",
            "Retry-After pauses the upstream asked for, by reason: `key` (StackOne's own "
            "429/408, the whole key waits) or `provider` (an account's provider, only that "
            "account waits). No account label: one series per reason.",
            ["reason"],
            registry=r,
        )
        self.throttle_wait = Counter(
            "lms_webhooks_throttle_wait_seconds",
            "Time spent waiting for a shared rate limit or a Retry-After pause.",
            ["limit"],
            registry=r,
        )
        self.poll_duration = Histogram(
            "lms_webhooks_poll_duration_seconds",
            "Duration of one user's poll, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.poll_failures = Counter(
            "lms_webhooks_poll_failures",
            "Failed polls by reason (account_rejected, user_not_found, unavailable, ...).",
            ["reason"],
            registry=r,
        )
        self.accounts_blocked = Gauge(
            "lms_webhooks_accounts_backed_off",
            "Accounts backed off after 401/403/412 (their users wait, not hammered).",
            registry=r,
        )
        # a fixed ten series (five states × two sources), never one per account
        self.accounts = Gauge(
            "lms_webhooks_accounts",
            "Accounts by state (active, paused, backed_off, not_lms, inactive) and source "
            "(config, discovery).",
            ["state", "source"],
            registry=r,
        )
        self.records_skipped = Counter(
            "lms_webhooks_records_skipped",
            "Upstream records that could not be tracked (e.g. without an id).",
            ["reason"],
            registry=r,
        )
        self.future_stamps = Counter(
            "lms_webhooks_future_stamps",
            "Upstream `updated_at` stamps too far ahead of the answer's Date to be believed "
            "(the record is still compared; the watermark does not move to the stamp).",
            ["listing"],
            registry=r,
        )
        self.events = Counter(
            "lms_webhooks_events", "Events detected and committed, by type.", ["type"], registry=r
        )
        self.deliveries = Counter(
            "lms_webhooks_deliveries",
            "Delivery attempts by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "lms_webhooks_delivery_latency_seconds",
            "From detection of a change to its successful delivery.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "lms_webhooks_queue_depth", "Events waiting per endpoint.", ["endpoint"], registry=r
        )
        self.dead_letters = Gauge(
            "lms_webhooks_dead_letters",
            "Dead-lettered events per endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.poll_lag = Gauge(
            "lms_webhooks_poll_lag_seconds",
            "How late the most overdue tracked user's poll is (0: every poll on time).",
            registry=r,
        )
        self.queue_age = Gauge(
            "lms_webhooks_queue_oldest_age_seconds",
            "How long the oldest due event of each endpoint has been waiting.",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_state = Gauge(
            "lms_webhooks_endpoint_state",
            "1 for the endpoint's current state (active, paused, disabled), else 0.",
            ["endpoint", "state"],
            registry=r,
        )
        self.endpoint_failures = Gauge(
            "lms_webhooks_endpoint_consecutive_failures",
            "Failed attempts in a row per endpoint.",
            ["endpoint"],
            registry=r,
        )

        self.feed_reads = Counter(
            "lms_webhooks_feed_reads",
            "Account change feed reads by outcome (ok, full, error).",
            ["outcome"],
            registry=r,
        )
        self.feed_fallbacks = Counter(
            "lms_webhooks_feed_fallbacks",
            "`strategy: auto` accounts fallen back to per-user polling, by reason.",
            ["reason"],
            registry=r,
        )
        self.redis_oom = Gauge(
            "lms_webhooks_redis_oom",
            "1 while Redis refuses writes for lack of memory (maxmemory, noeviction), else 0.",
            registry=r,
        )
        self.accounts_fallen_back = Gauge(
            "lms_webhooks_accounts_fallen_back",
            "`strategy: auto` accounts polled per user now, their feed unusable.",
            registry=r,
        )
        self.listed_users = Counter(
            "lms_webhooks_listing_changes",
            "Users that joined or left a `users: all` account's listing (held: left out by a "
            "complete listing that dropped more than half, kept until a second one agrees).",
            ["change"],
            registry=r,
        )

        self.budget_needed = Gauge(
            "lms_webhooks_budget_needed_per_minute",
            "Upstream requests a minute the configured cadences need (the budget plan).",
            registry=r,
        )
        self.budget_allowed = Gauge(
            "lms_webhooks_budget_allowed_per_minute",
            "Upstream requests a minute the plan may spend (97% of max_requests_per_minute).",
            registry=r,
        )
        self.effective_interval = Gauge(
            "lms_webhooks_effective_interval_seconds",
            "The cadence the plan gives each strategy (per_user, account, listing, "
            "full_resync): the configured one, or longer when it does not fit the budget.",
            ["strategy"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def report_future_stamps(metrics: Metrics, listing: str, stamps: Watermark, **where: str) -> None:
    """Stamps a read did not believe (too far ahead of the upstream's clock): counted, and
    one log line for the read, never one a record."""
    if not stamps.implausible:
        return
    metrics.future_stamps.labels(listing).inc(stamps.implausible)
    newest = stamps.newest_implausible
    structlog.get_logger("upstream").warning(
        "future_stamps_ignored",
        listing=listing,
        count=stamps.implausible,
        newest=None if newest is None else newest.isoformat(),
        **where,
    )
