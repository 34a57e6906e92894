"""Traces (docs/operating.md, Tracing): one change followed from the read that found it to the
receiver's 2xx, across a poller and a dispatcher process, as a real collector's OTLP/HTTP
receiver gets them; and with tracing off, nothing of it in the queue."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from redis.asyncio import Redis

from service import tracing
from service.changes import events as ev
from service.config import TracingSettings
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, ReceivedEvent, Receiver
from service.store import keys
from tests.helpers import (
    ACCOUNT,
    API_KEY,
    ROOT,
    SECRET,
    RunProcess,
    baselined,
    driven,
    endpoint,
    make_settings,
    queue_drained,
    seed,
    seed_user,
    wait_until,
)
from tests.redis_server import RedisServer
from tests.test_feed import feed_settings

COLLECTOR_KEY = "otlp-key-5d1e9b"  # a header the collector wants: a secret of the config
HR_META = keys.EndpointKeys("hr").meta


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    attributes: dict[str, Any]
    resource: dict[str, Any]
    failed: bool


def _values(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        kind = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, kind) if kind else None
    return found


@dataclass
class Collector:
    """An OpenTelemetry Collector's OTLP/HTTP traces receiver: protobuf in, decoded."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    keys_sent: list[str | None] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        assert request.headers["Content-Type"] == "application/x-protobuf"
        self.keys_sent.append(request.headers.get("x-collector-key"))
        message = ExportTraceServiceRequest.FromString(raw)
        for resource_spans in message.resource_spans:
            resource = _values(resource_spans.resource.attributes)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        ReceivedSpan(
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            _values(span.attributes),
                            resource,
                            span.status.code == Status.STATUS_CODE_ERROR,
                        )
                    )
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def by_id(self, span_id: str) -> ReceivedSpan:
        [found] = [s for s in self.spans if s.span_id == span_id]
        return found

    def children(self, parent: ReceivedSpan, name: str) -> list[ReceivedSpan]:
        return [
            s
            for s in self.named(name)
            if s.parent_id == parent.span_id and s.trace_id == parent.trace_id
        ]

    def delivered(self, event_id: str) -> ReceivedSpan | None:
        """The span of the attempt that got `event_id` a 2xx."""
        return next(
            (
                s
                for s in self.named("delivery attempt")
                if s.attributes["lms_webhooks.event_id"] == event_id
                and 200 <= s.attributes.get("http.response.status_code", 0) < 300
            ),
            None,
        )


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    found = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
    yield found
    await runner.cleanup()


def traced_config(tmp_path: Path) -> str:
    """config/test.yaml with tracing to the test's collector, each process its own export
    interval (OTLP_INTERVAL)."""
    text = (ROOT / "config" / "test.yaml").read_text()
    text += (
        "tracing:\n"
        "  endpoint: ${OTLP_URL}\n"
        "  service_name: lms-webhooks-test\n"
        "  headers:\n"
        "    x-collector-key: ${COLLECTOR_KEY}\n"
        "  export_interval: ${OTLP_INTERVAL}\n"
    )
    path = tmp_path / "traced.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.slow
async def test_one_change_is_traced_from_the_read_to_the_receivers_2xx_across_processes(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    collector: Collector,
    tmp_path: Path,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim, 2)
    config = traced_config(tmp_path)
    env = {"OTLP_URL": collector.url, "COLLECTOR_KEY": COLLECTOR_KEY}
    poller = RunProcess(
        redis_server.url, lms_url, rx_url, tmp_path / "poller.log", config, role="poller"
    )
    dispatcher = RunProcess(
        redis_server.url, lms_url, rx_url, tmp_path / "dispatcher.log", config, "dispatcher"
    )
    # the poller's spans go out every 50 ms; the dispatcher's only when it stops (an export
    # interval of 5 min): they reach the collector by the flush on SIGTERM
    poller.env |= {**env, "OTLP_INTERVAL": "50ms"}
    dispatcher.env |= {**env, "OTLP_INTERVAL": "5m"}
    try:
        poller.start()
        dispatcher.start()
        await wait_until(lambda: baselined(redis, "u_1"), 20, "u_1's baseline")
        sim.progress(ACCOUNT, "u_1", "a1", 100)
        await rx.wait_for(lambda events: any(e.type == ev.COMPLETED for e in events), 20)
        await queue_drained(redis)
        [completed] = [e for e in rx.events if e.type == ev.COMPLETED]
        # the commit that queued it has reached the collector, from the poller
        await wait_until(
            lambda: any(s.attributes.get("lms_webhooks.events") for s in collector.spans),
            20,
            "the commit's span",
        )
        assert collector.named("delivery attempt") == []  # the dispatcher's wait for its stop
        # in a thread: the collector, on this loop, must answer the processes' last exports
        assert await asyncio.to_thread(dispatcher.stop) == 0
        assert await asyncio.to_thread(poller.stop) == 0
    finally:
        poller.ensure_stopped()
        dispatcher.ensure_stopped()

    attempt = collector.delivered(completed.webhook_id or "")
    assert attempt is not None, "the delivery's span, sent when the dispatcher stopped"
    assert attempt.attributes["http.response.status_code"] == 200
    assert attempt.attributes["lms_webhooks.endpoint_id"] == "hr"
    assert attempt.attributes["lms_webhooks.attempt"] == 1
    assert not attempt.failed
    # its parent is the commit that queued the event, in the poller; the commit's is the poll
    commit = collector.by_id(attempt.parent_id)
    assert commit.name == "commit poll" and commit.trace_id == attempt.trace_id
    assert commit.attributes["lms_webhooks.events"] >= 4  # updated, status, completed, progress
    poll = collector.by_id(commit.parent_id)
    assert poll.name == "poll" and poll.trace_id == attempt.trace_id and poll.parent_id == ""
    assert poll.attributes["lms_webhooks.user_id"] == "u_1"
    assert poll.attributes["lms_webhooks.outcome"] == "ok"
    [request] = collector.children(poll, "GET")  # one page: a1 changed since the watermark
    assert request.attributes["http.request.method"] == "GET"
    assert request.attributes["url.path"] == "/unified/lms/users/u_1/assignments"
    assert request.attributes["http.response.status_code"] == 200
    # two processes, each its own resource
    assert poll.resource == commit.resource and poll.resource["lms_webhooks.role"] == "poller"
    assert attempt.resource["lms_webhooks.role"] == "dispatcher"
    assert attempt.resource["process.pid"] != poll.resource["process.pid"]
    assert attempt.resource["service.name"] == "lms-webhooks-test"
    # the collector's key went with every export, and never into a span or a log
    assert set(collector.keys_sent) == {COLLECTOR_KEY}
    texts = [str(s.attributes) + str(s.resource) for s in collector.spans]
    for secret in (COLLECTOR_KEY, API_KEY, SECRET, "whsec_"):
        assert not any(secret in text for text in texts)
    assert not any("?" in str(s.attributes.get("url.path")) for s in collector.spans)
    logs = poller.log.read_text() + dispatcher.log.read_text()
    assert COLLECTOR_KEY not in logs and "tracing_started" in logs


async def test_feed_and_listing_reads_are_traced_with_their_deliveries(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    collector: Collector,
) -> None:
    """In one process: a listing read, a feed read (each with its requests and its commit),
    and the attempts to deliver what the feed found (a 503, then a 2xx), each a child of the
    feed's commit."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    settings = feed_settings(redis_server.url, lms_url, rx_url, "all", "account")
    refused: list[str] = []

    def once_503(event: ReceivedEvent) -> Answer | None:
        if event.type != ev.COMPLETED or refused:
            return None
        refused.append(event.webhook_id or "")
        return Answer(status=503)

    rx.answer_for = once_503
    tracing.start(TracingSettings(endpoint=collector.url, export_interval=0.01), "all")
    try:
        async with driven(settings, sim) as service:
            await service.baseline()
            await service.step(0.5)
            sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
            await service.step(0.5)
            assert refused and not [e for e in rx.events if e.type == ev.COMPLETED]
            await service.step(0.5)  # the retry (200 ms on)
            assert [e.type for e in rx.events if e.type == ev.COMPLETED] == [ev.COMPLETED]
    finally:  # in a thread: the collector, on this loop, answers the last export
        await asyncio.to_thread(tracing.stop, 5.0)
    [completed] = [e for e in rx.events if e.type == ev.COMPLETED]
    attempt = collector.delivered(completed.webhook_id or "")
    assert attempt is not None and attempt.attributes["lms_webhooks.attempt"] == 2
    commit = collector.by_id(attempt.parent_id)
    assert commit.name == "commit feed"
    [first] = [
        s
        for s in collector.children(commit, "delivery attempt")
        if s.attributes["lms_webhooks.event_id"] == completed.webhook_id
        and s.attributes["lms_webhooks.attempt"] == 1
    ]
    assert first.failed and first.attributes["http.response.status_code"] == 503
    read = collector.by_id(commit.parent_id)
    assert read.name == "feed read" and read.attributes["lms_webhooks.account_id"] == ACCOUNT
    paths = {s.attributes["url.path"] for s in collector.children(read, "GET")}
    assert paths == {"/unified/lms/assignments"}
    [listing, *_] = collector.named("listing read")
    assert {s.attributes["url.path"] for s in collector.children(listing, "GET")} == {
        "/unified/lms/users"
    }
    assert collector.children(listing, "commit listing")
    assert not tracing.enabled()


async def test_tracing_off_leaves_nothing_with_the_queued_events(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Any
) -> None:
    sim, lms_url = lms
    _, rx_url = receiver
    seed_user(sim, "u_1", 2)
    settings = make_settings(redis_server.url, lms_url, [endpoint(rx_url)], ["u_1"])
    assert not settings.tracing.enabled and not tracing.enabled()
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        service.clock.advance(0.5)
        await service.poll()  # committed, not yet delivered
        assert await redis.zcard(keys.EndpointKeys("hr").due) >= 4
        assert await redis.hlen(HR_META) == 0  # no meta until an attempt fails
        claimed = await service.service.queue.claim("hr", service.clock(), 3.0, 10)
        assert claimed and all(e.meta.traceparent == "" for e in claimed)
