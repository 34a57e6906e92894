"""The service's own OpenAPI document, served at `GET /openapi.json`: every schema is
generated from the models of `service/contract` (the admin API's answers and the webhook
bodies, the latter as the document's `webhooks` section, one entry per event type). What
stays here is what no model can say: each route's summary, parameters and error statuses."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from service import __version__
from service.contract import admin as m
from service.contract.webhooks import CATALOG, EventType
from service.operations import MAX_LIMIT
from service.user_ids import MAX_USER_ID

_REF = "#/components/schemas/{model}"
_REASONS = {
    400: "Malformed request",
    401: "Missing or wrong bearer token",
    404: "Unknown endpoint, account, user or event",
    409: "Conflict",
    429: "Too many wrong bearer tokens from this client: wait `Retry-After` seconds",
    503: "Redis unavailable",
}
_SIGNATURE_HEADERS = {
    "webhook-id": "The event id (the body's `id`): deduplicate on it.",
    "webhook-timestamp": "Unix seconds of this attempt.",
    "webhook-signature": 'Space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, '
    "one per configured secret, keyed with the base64 after `whsec_` (Standard Webhooks).",
}


class _Schemas:
    """Every model the document names, its JSON Schema generated once into components."""

    def __init__(self) -> None:
        self.wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m.Error, "serialization")]

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> Any:
        self.wanted.append((model, mode))
        return (model, mode)  # a placeholder, replaced by the model's $ref in `resolve`

    def resolve(self, document: Any) -> dict[str, Any]:
        refs, top = models_json_schema(list(dict.fromkeys(self.wanted)), ref_template=_REF)

        def swap(node: Any) -> Any:
            if isinstance(node, tuple):
                return refs[node]
            if isinstance(node, dict):
                return {k: swap(v) for k, v in node.items()}
            if isinstance(node, list):
                return [swap(v) for v in node]
            return node

        resolved: dict[str, Any] = swap(document)
        resolved["components"]["schemas"] = top.get("$defs", {})
        return resolved


def _json(schema: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


class _Operations:
    """Builds each route's operation with the models' placeholders."""

    def __init__(self, schemas: _Schemas) -> None:
        self.schemas = schemas

    def __call__(
        self,
        summary: str,
        answer: type[BaseModel],
        *errors: int,
        status: int = 200,
        params: list[dict[str, Any]] | None = None,
        body: type[BaseModel] | None = None,
        description: str | None = None,
        also: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {"summary": summary}
        if description:
            operation["description"] = description
        operation["security"] = [{"bearer": []}]
        if params:
            operation["parameters"] = params
        if body is not None:
            content = {"application/json": {"schema": self.schemas.ref(body, "validation")}}
            operation["requestBody"] = {"required": True, "content": content}
        # wherever a token is checked (every admin route), guessing it is limited
        statuses = sorted({*errors, 401, 429})
        error = self.schemas.ref(m.Error)
        operation["responses"] = {
            str(status): _json(self.schemas.ref(answer)),
            **(also or {}),
            **{str(s): _json(error, _REASONS[s]) for s in statuses},
        }
        return operation


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _page(default: int) -> list[dict[str, Any]]:
    limit = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": default}
    return [
        _query("limit", limit, "the most items in one page"),
        _query("cursor", {"type": "string"}, "`next_cursor` of the page before"),
    ]


def _admin_paths(op: _Operations) -> dict[str, Any]:
    endpoint_id = [_path("endpoint_id")]
    instant = "epoch milliseconds or an ISO 8601 instant (UTC without an offset)"
    return {
        "/admin/endpoints": {
            "get": op(
                "Each endpoint's state, failures, queue depth and dead letters",
                m.EndpointPage, 400, 503, params=_page(100),
            )
        },
        "/admin/endpoints/{endpoint_id}/enable": {
            "post": op(
                "Re-enable a disabled or paused endpoint; its queue resumes",
                m.EndpointHealth, 404, 503, params=endpoint_id,
            )
        },
        "/admin/endpoints/{endpoint_id}/test": {
            "post": op(
                "Send a signed `webhook.test` event to this endpoint now (never retried; "
                "recorded in the delivery log) and answer with the outcome",
                m.TestSend, 400, 404, 503, params=endpoint_id,
            )
        },
        "/admin/endpoints/{endpoint_id}/redeliver": {
            "post": op(
                "Queue the endpoint's logged events of a time range again, same ids and "
                "bodies, atomically: those delivered, dead-lettered, or either",
                m.Queued, 400, 404, 503, params=endpoint_id, body=m.Redeliver,
            )
        },
        "/admin/events": {
            "get": op(
                "Logged events, newest first, each with its outcome and attempts per "
                "endpoint; a page may be short (even empty) with a cursor to go on",
                m.EventPage, 400, 404, 503,
                params=[
                    _query("endpoint", {"type": "string"}, "only the events queued for it"),
                    _query("type", {"type": "string"}, "event type"),
                    _query("account_id", {"type": "string"}),
                    _query("user_id", {"type": "string"}),
                    _query("assignment_id", {"type": "string"}),
                    _query("completion_id", {"type": "string"}),
                    _query(
                        "outcome",
                        {"type": "string", "enum": list(get_args(m.Outcome))},
                        "at `endpoint`, or at any endpoint",
                    ),
                    _query("since", {"type": "string"}, f"logged at or after: {instant}"),
                    _query("until", {"type": "string"}, f"logged at or before: {instant}"),
                    *_page(50),
                ],
            )
        },
        "/admin/events/{event_id}": {
            "get": op(
                "One logged event: its body as sent and every attempt per endpoint",
                m.Event, 400, 404, 503, params=[_path("event_id")],
            )
        },
        "/admin/dead-letters": {
            "get": op(
                "Dead-lettered events of one endpoint, with their last error",
                m.DeadLetters, 400, 404, 503,
                params=[
                    {**_query("endpoint", {"type": "string"}), "required": True},
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
            )
        },
        "/admin/dead-letters/replay": {
            "post": op(
                "Queue dead letters again with the same event ids (no ids: all)",
                m.Queued, 400, 404, 503, body=m.Replay,
            )
        },
        "/admin/users": {
            "get": op(
                "Tracked users: the config's, the listings' and those added at run time, "
                "by account and user id",
                m.UserPage, 400, 503, params=_page(100),
            ),
            "post": op(
                "Track a user of a configured account from now on (kept in Redis)",
                m.UserAdded, 400, 404, 503, status=201, body=m.NewUser,
                description=f"`user_id`: 1 to {MAX_USER_ID} characters, not `.` or `..` "
                "(400); an account the config does not name: 404.",
                also={"200": _json(op.schemas.ref(m.UserAdded), "Already tracked")},
            ),
        },
        "/admin/users/{account_id}/{user_id}": {
            "delete": op(
                "Stop tracking a run-time user",
                m.UserRemoved, 404, 409, 503, params=[_path("account_id"), _path("user_id")],
            )
        },
        "/admin/accounts": {
            "get": op(
                "Every account (read, or linked and not read), by id: its state, source, "
                "provider, owner, strategy in force (and why), last read, lag, last error, "
                "feed and listing state, users tracked and back-off",
                m.AccountList, 400, 503,
                params=[
                    _query("state", {"type": "string", "enum": list(get_args(m.AccountState))},
                           "only the accounts in this state"),
                    *_page(100),
                ],
            )
        },
        "/admin/budget": {
            "get": op(
                "The budget plan: requests a minute needed and allowed, the effective "
                "cadence per strategy, users and accounts per strategy",
                m.Budget, 503,
            )
        },
        "/admin/poll": {
            "post": op(
                "Poll a tracked user now", m.PollQueued, 400, 404, 503, status=202,
                body=m.UserRef,
            )
        },
    }  # fmt: skip


def _webhook(entry: EventType, schemas: _Schemas) -> dict[str, Any]:
    """One event type as OpenAPI 3.1 describes a webhook (what Svix's and Convoy's
    importers read): the POST the service sends, its body's schema and an example."""
    headers = [
        {"name": name, "in": "header", "required": True, "schema": {"type": "string"},
         "description": text}
        for name, text in _SIGNATURE_HEADERS.items()
    ]  # fmt: skip
    content = {"schema": schemas.ref(entry.model), "example": entry.example_body()}
    return {
        "post": {
            "operationId": entry.name,
            "summary": entry.name,
            "description": f"Sent when {entry.when}.",
            "parameters": headers,
            "requestBody": {"required": True, "content": {"application/json": content}},
            "responses": {
                "200": {
                    "description": "Received. Any 2xx acknowledges it; anything else is "
                    "retried on the retry schedule (410 disables the endpoint)."
                }
            },
        }
    }


def build_openapi(admin: bool) -> dict[str, Any]:
    """The document; the admin routes are listed only when the admin API is on."""
    schemas = _Schemas()
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": _json(schemas.ref(m.Liveness))}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis takes writes and the workers run",
                "responses": {
                    "200": _json(schemas.ref(m.Readiness)),
                    "503": _json(schemas.ref(m.Readiness), "Not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {}}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"})},
            }
        },
    }
    if admin:
        paths.update(_admin_paths(_Operations(schemas)))
    return schemas.resolve(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "lms-webhooks",
                "version": __version__,
                "description": "The service's HTTP API, and (`webhooks`) the events it sends: "
                "see docs/events.md.",
            },
            "paths": paths,
            "webhooks": {entry.name: _webhook(entry, schemas) for entry in CATALOG},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        }
    )
