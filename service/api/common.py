"""What every route of the service's HTTP API shares: the operations it serves, answers and
JSON errors, and reading a JSON body into its model."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from service.contract.admin import Error, Request, instant_ms
from service.errors import InvalidInput, NotFound
from service.operations import Operations
from service.store.redis_health import out_of_memory

log = structlog.get_logger("api")

OPS_KEY: web.AppKey[Operations] = web.AppKey("operations", Operations)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RequestT = TypeVar("RequestT", bound=Request)


class BadRequest(Exception):
    """Malformed input: answered 400 with the reason."""


def ops(request: web.Request) -> Operations:
    return request.app[OPS_KEY]


def json_error(status: int, error: str, detail: object = None) -> web.Response:
    return answer(Error(error=error, detail=detail), status)


def answer(value: BaseModel, status: int = 200) -> web.Response:
    """An answer as JSON: a model of service/contract/admin.py, the one /openapi.json
    documents, validated strictly when it was built (so a field the code adds without the
    model, or a value of another type, is a bug, 500 and logged, instead of an undocumented
    answer)."""
    return web.json_response(value.model_dump(mode="json"), status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a JSON `{"error", "detail"}`: 4xx for bad input, 503 while Redis is away,
    and 500 (logged) for a bug, instead of aiohttp's plain text."""
    try:
        return await handler(request)
    except (BadRequest, InvalidInput) as e:
        return json_error(400, "bad request", str(e))
    except NotFound as e:
        return json_error(404, str(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return json_error(e.status, e.reason)
    except RedisError as e:
        if out_of_memory(e):  # it takes no new data until memory is freed
            return json_error(503, "store out of memory")
        return json_error(503, "store unavailable")
    except Exception:
        log.exception("http_handler_failed", method=request.method, path=request.path)
        return json_error(500, "internal error")


async def json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}") from e
    except ValueError as e:  # an int of more than 4300 digits: Python reads none that long
        raise BadRequest("the body holds a number too long to read") from e
    except RecursionError as e:  # `[[[[...` 100,000 deep
        raise BadRequest("the body is nested too deeply") from e
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def body_as(request: web.Request, model: type[RequestT]) -> RequestT:
    """The request's JSON body as its model; 400 naming the first field that is wrong."""
    return parsed_as(model, await json_object(request))


def parsed_as(model: type[RequestT], fields: dict[str, Any]) -> RequestT:
    """A JSON body's fields, or a console form's, as their model: the console refuses what
    the API refuses, and says so alike (400 naming the first field that is wrong)."""
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        raise BadRequest(_first_problem(e)) from None


def instant_param(value: str | None, name: str) -> int | None:
    """A query's instant, as a body's (contract Instant): epoch milliseconds or an ISO 8601
    instant (without an offset: UTC); empty is none."""
    if value is None or not value.strip():
        return None
    try:
        return instant_ms(value.strip())
    except ValueError as e:
        raise BadRequest(f"`{name}` {e}") from None


def _first_problem(error: ValidationError) -> str:
    """`field`, or `field[n]` for a list's item: the message, without the value given."""
    first = error.errors(include_url=False, include_input=False)[0]
    name, *rest = first["loc"] or ("body",)
    where = str(name)
    for part in rest:
        if not isinstance(part, int):
            break  # a union's member or a validator's name: no field of the body
        where += f"[{part}]"
    return f"`{where}`: {first['msg']}"
