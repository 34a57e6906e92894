"""OpenTelemetry traces (docs/operating.md, Tracing): off unless `tracing.endpoint` is set.

One tracer per process, set up by `lms-webhooks run` and flushed when it stops. Every layer
(the store and the upstream client too) opens its spans through `span()`, which, with
tracing off, hands back one shared no-op context: no span, no context switch, nothing
stored with an event. An event's trace crosses processes as the W3C `traceparent` of the
commit that queued it (`traceparent()`), kept with the event in the queue (its meta) and
the parent of each of its delivery attempts' spans.

Attributes hold ids, methods, paths without their query, statuses and error types: never a
secret, a URL's query, an answer's or a record's contents.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from service import __version__
from service.config import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger("service")

Attributes = Mapping[str, AttributeValue]

# the one no-op context of every span while tracing is off (nullcontext is reusable)
_OFF: AbstractContextManager[Span] = contextlib.nullcontext(INVALID_SPAN)
_PROPAGATOR = TraceContextTextMapPropagator()
# version 00 of W3C Trace Context: what traceparent() writes and a delivery reads back
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

_tracer: trace.Tracer | None = None  # None: tracing off
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _tracer is not None


def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: str | None = None,
) -> AbstractContextManager[Span]:
    """A span, current inside the block, child of the current one or of `parent` (a
    traceparent; an invalid one is ignored). An exception leaving the block marks it failed
    with the exception's type only: a message may quote a URL or an answer."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    context = None
    if parent and TRACEPARENT.match(parent):
        context = _PROPAGATOR.extract({"traceparent": parent})
    return _span(tracer, name, attributes, kind, context)


@contextlib.contextmanager
def _span(
    tracer: trace.Tracer,
    name: str,
    attributes: Attributes | None,
    kind: SpanKind,
    context: Context | None,
) -> Iterator[Span]:
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as e:
            failed(current, type(e).__name__)
            raise


def failed(current: Span, error_type: str) -> None:
    """Mark a span failed, saying only what kind of failure it was."""
    current.set_attribute("error.type", error_type)
    current.set_status(Status(StatusCode.ERROR, error_type))


def traceparent() -> str:
    """The current span's W3C traceparent; "" when tracing is off or no span is current."""
    if _tracer is None:
        return ""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


_QUERY = re.compile(r"\?[^\s'\"<>]*")


def without_query(text: str) -> str:
    """`text` with every URL query in it cut (a receiver's URL may carry a token there)."""
    return _QUERY.sub("?…", text)


def _where(url: str) -> str:
    """A URL without what may be secret in it (credentials, query), for the log."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def start(settings: TracingSettings, role: str) -> bool:
    """Set this process's tracer up as `settings` say; False when tracing is off."""
    global _tracer, _provider
    if settings.endpoint is None:
        return False
    # imported here: a process without tracing never loads the SDK and its exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.version": __version__,
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
            "process.pid": os.getpid(),
            "lms_webhooks.role": role,
        }
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio))
    )
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint,
        headers={name: value.get_secret_value() for name, value in settings.headers.items()},
        timeout=settings.timeout,
    )
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=settings.export_interval * 1000)
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("lms-webhooks", __version__)
    log.info(
        "tracing_started",
        endpoint=_where(settings.endpoint),
        service_name=settings.service_name,
        sample_ratio=settings.sample_ratio,
    )
    return True


def stop(timeout: float) -> None:
    """Send the spans still waiting and end tracing, waiting at most `timeout` seconds: a
    collector that does not answer loses them rather than hold the process's stop up (an
    export may take `tracing.timeout`, and the SDK's flush ignores its own timeout)."""
    global _tracer, _provider
    provider = _provider
    _tracer = _provider = None
    if provider is None:
        return
    ending = threading.Thread(target=provider.shutdown, name="tracing-stop", daemon=True)
    ending.start()
    ending.join(timeout)
    if ending.is_alive():
        log.warning("tracing_flush_incomplete", timeout=timeout)
