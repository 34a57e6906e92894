"""The upstream record shapes (OpenAPI `Assignment`, `Completion`) and page parsing.

Records are validated against the model but kept as the dicts received, so unknown fields and
unknown enum values pass through to the webhooks untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import UnionType
from typing import Any, Union, get_args, get_origin

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from service import jsonfmt
from service.errors import UpstreamMalformed
from service.linked_account import LinkedAccount
from service.resources import ASSIGNMENTS, COMPLETIONS, Resource
from service.user_ids import user_id_problem


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class EnumValue(_Open):
    """`{value, source_value}`; `value` is a plain string: unknown values are allowed."""

    value: str | None = None
    source_value: Any = None


class Assignment(_Open):
    """Every field nullable, as in the OpenAPI text; numbers may come as numeric strings."""

    id: str | None = None
    remote_id: str | None = None
    unified_custom_fields: dict[str, Any] | None = None
    external_reference: str | None = None
    learning_object_id: str | None = None
    remote_learning_object_id: str | None = None
    learning_object_external_reference: str | None = None
    progress: float | str | None = None
    updated_at: str | None = None
    created_at: str | None = None
    assigned_at: str | None = None
    due_date: str | None = None
    status: EnumValue | None = None
    learning_object_type: EnumValue | None = None
    user_id: str | None = None
    remote_user_id: str | None = None
    certificate_url: str | None = None
    result: EnumValue | None = None
    completed_at: str | None = None
    course_id: str | None = None
    remote_course_id: str | None = None


class Completion(_Open):
    """`lms_list_completions`' record (stackone/linked-accounts.md), every field nullable."""

    id: str | None = None
    remote_id: str | None = None
    external_reference: str | None = None
    user_id: str | None = None
    remote_user_id: str | None = None
    course_id: str | None = None
    content_id: str | None = None
    learning_object_id: str | None = None
    # providers differ in these: an enum object or a bare value, a number or an object
    learning_object_type: EnumValue | str | None = None
    learning_object_external_reference: str | None = None
    completed_at: str | None = None
    result: EnumValue | str | None = None
    score: float | str | dict[str, Any] | None = None
    time_spent: float | str | None = None
    certificate_url: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    unified_custom_fields: dict[str, Any] | None = None


def _plain_shapes(model: type[BaseModel]) -> Callable[[dict[str, Any]], bool]:
    """A check that every known field of a record has one of its annotation's plain JSON
    shapes (str for `str`, an int or float for `float`, a dict for a dict or a nested model
    whose own fields are plain). True means the model accepts the record; False means only
    that pydantic must decide (e.g. a numeric string for `float`)."""
    plain: dict[str, frozenset[type]] = {}
    nested: dict[str, Callable[[dict[str, Any]], bool]] = {}
    for name, info in model.model_fields.items():
        union = get_origin(info.annotation) in (Union, UnionType)
        options = get_args(info.annotation) if union else (info.annotation,)
        kinds: set[type] = set()
        for option in options:
            if option is Any:
                kinds = {object}  # marker: anything goes
                break
            if isinstance(option, type) and issubclass(option, BaseModel):
                nested[name] = _plain_shapes(option)
            elif get_origin(option) is dict:
                kinds.add(dict)
            elif option is float:
                kinds |= {float, int}
            elif isinstance(option, type):
                kinds.add(option)
        plain[name] = frozenset(kinds)

    def valid(record: dict[str, Any]) -> bool:
        for name, value in record.items():
            kinds = plain.get(name)
            # exact types: a bool is not taken for an int here
            if kinds is None or type(value) in kinds or object in kinds:
                continue
            check = nested.get(name)
            if check is None or type(value) is not dict or not check(value):
                return False
        return True

    return valid


# Validating every record with pydantic costs more than detecting its changes; almost every
# record has only plain shapes, which this accepts at once. The rest go to pydantic.
plainly_valid = _plain_shapes(Assignment)


@dataclass(frozen=True, slots=True)
class _Shape:
    """How a resource's records are checked."""

    model: type[BaseModel]
    plainly_valid: Callable[[dict[str, Any]], bool]
    needs_user_id: bool  # a record that names no user cannot be routed or tracked


_SHAPES = {
    ASSIGNMENTS.name: _Shape(Assignment, plainly_valid, needs_user_id=False),
    COMPLETIONS.name: _Shape(Completion, _plain_shapes(Completion), needs_user_id=True),
}


@dataclass(slots=True)
class Page:
    records: list[dict[str, Any]]  # as received, each with a usable string `id`
    next: str | None
    # records that cannot be tracked, by reason (`missing_id`, `invalid_record`)
    skipped: dict[str, int] = field(default_factory=dict)
    served_at: datetime | None = None  # the answer's `Date`: the upstream's clock

    @property
    def listed(self) -> int:
        """Records the page listed, skipped ones too."""
        return len(self.records) + sum(self.skipped.values())


# A provider may round a page up a little; one far beyond what was asked (100,000 records for
# 100) is a broken page: validating it record by record held the event loop for a second.
PAGE_SLACK_RECORDS = 10


def max_page_records(page_size: int) -> int:
    """The most records a page asked for `page_size` may hold."""
    return 2 * page_size + PAGE_SLACK_RECORDS


def has_provider_errors(raw: bytes) -> bool:
    """Whether an error body carries a non-empty `provider_errors` list: StackOne passing on
    the account's provider's own answers (a 429 then limits that account, not the key).
    Anything else (not JSON, not an object, no list, an empty one) is StackOne's own."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    errors = body.get("provider_errors") if isinstance(body, dict) else None
    return isinstance(errors, list) and len(errors) > 0


def _envelope(raw: bytes, page_size: int | None) -> tuple[list[Any], str | None, bool]:
    """A list body's `data` and `next`, and whether orjson read it (plain JSON types only),
    or UpstreamMalformed saying what is wrong. `page_size`: what was asked; a page of more
    than max_page_records(page_size) is refused before any record is looked at."""
    try:
        body, plain = jsonfmt.loads_exact(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UpstreamMalformed(f"response is not JSON: {e}") from e
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise UpstreamMalformed("response has no `data` list")
    if page_size is not None and len(body["data"]) > max_page_records(page_size):
        raise UpstreamMalformed(
            f"a page of {len(body['data'])} records where page_size {page_size} was asked"
        )
    cursor = body.get("next")
    if cursor is not None and not isinstance(cursor, str):
        raise UpstreamMalformed("`next` is neither a string nor null")
    return body["data"], cursor or None, plain


def parse_page(raw: bytes, page_size: int | None = None, resource: Resource = ASSIGNMENTS) -> Page:
    """A body of `AssignmentsPaginated` (`CompletionsPaginated` for completions), or
    UpstreamMalformed saying what is wrong.

    The envelope must have the documented shape. A single record that does not is skipped and
    counted, so one odd record cannot block every later poll of its user.
    """
    data, cursor, plain = _envelope(raw, page_size)
    page = Page([], cursor)
    shape = _SHAPES[resource.name]
    # One call shows that every record of the page can be written again (the usual case).
    writable = plain and _orjson_writes(data)
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise UpstreamMalformed(f"data[{index}] is not an object")
        if isinstance(item.get("id"), int) and not isinstance(item["id"], bool):
            item["id"] = str(item["id"])  # a numeric id is still an id
        reason = _unusable(item, plain, writable, shape)
        if reason is not None:
            page.skipped[reason] = page.skipped.get(reason, 0) + 1
            continue
        page.records.append(item)
    return page


@dataclass(slots=True)
class UserPage:
    """One page of an account's user listing (`GET /unified/lms/users`)."""

    active: list[str]  # ids of the users listed as active (or without `active`)
    inactive: list[str]  # ids of the users listed with `active: false`
    next: str | None
    updated_at: list[object] = field(default_factory=list)  # each user's, as received
    skipped: int = 0  # users without a usable id
    served_at: datetime | None = None  # the answer's `Date`: the upstream's clock

    @property
    def listed(self) -> int:
        """Users the page listed, skipped ones too."""
        return len(self.active) + len(self.inactive) + self.skipped


def parse_user_page(raw: bytes, page_size: int | None = None) -> UserPage:
    """A page of `LmsUsersPaginated`, or UpstreamMalformed; a user without a usable id (not
    a string, empty, `.`, `..`, too long: service/user_ids.py) is skipped and counted.
    `page_size`: as for parse_page."""
    data, cursor, _ = _envelope(raw, page_size)
    page = UserPage([], [], cursor)
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise UpstreamMalformed(f"data[{index}] is not an object")
        user_id = item.get("id")
        # none, or one no request can name
        if not isinstance(user_id, str) or user_id_problem(user_id) is not None:
            page.skipped += 1
            continue
        (page.inactive if item.get("active") is False else page.active).append(user_id)
        page.updated_at.append(item.get("updated_at"))
    return page


@dataclass(slots=True)
class LinkedAccountPage:
    """One page of the project's linked accounts (`GET /accounts`): their public fields only
    (`credentials` and `setup_information` are dropped here, never kept)."""

    accounts: list[LinkedAccount]
    skipped: int = 0  # accounts without a usable id
    served_at: datetime | None = None  # the answer's `Date`: the upstream's clock
    next: None = None  # paged by number, not by cursor

    @property
    def listed(self) -> int:
        """Accounts the page listed, skipped ones too (a page shorter than asked is the
        last)."""
        return len(self.accounts) + self.skipped


def parse_linked_account_page(raw: bytes, page_size: int | None = None) -> LinkedAccountPage:
    """A page of `GET /accounts`: a JSON array of `LinkedAccount`, or UpstreamMalformed (not
    JSON, not an array, an item that is not an object, more than max_page_records). An
    account without a usable `id` is skipped and counted."""
    try:
        body, _ = jsonfmt.loads_exact(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UpstreamMalformed(f"response is not JSON: {e}") from e
    if not isinstance(body, list):
        raise UpstreamMalformed("the linked accounts listing is not a JSON array")
    if page_size is not None and len(body) > max_page_records(page_size):
        raise UpstreamMalformed(
            f"a page of {len(body)} accounts where page_size {page_size} was asked"
        )
    page = LinkedAccountPage([])
    for index, item in enumerate(body):
        if not isinstance(item, dict):
            raise UpstreamMalformed(f"account [{index}] is not an object")
        account = LinkedAccount.listed(item)
        if account is None:
            page.skipped += 1
        else:
            page.accounts.append(account)
    return page


def _unusable(item: dict[str, Any], plain: bool, writable: bool, shape: _Shape) -> str | None:
    """Why a record cannot be tracked, or None. `plain`: orjson read it, so its values are of
    plain JSON types only (no huge integers, no lone surrogates, no NaN) and the fast check is
    exact; `writable`: orjson wrote the whole page again."""
    if not item.get("id") or not isinstance(item["id"], str):
        return "missing_id"
    if shape.needs_user_id and (not item.get("user_id") or not isinstance(item["user_id"], str)):
        return "missing_user_id"
    if plain:
        if not writable and not _orjson_writes(item):
            return "invalid_record"
        if shape.plainly_valid(item):
            return None
    elif not _storable(item):
        return "invalid_record"
    try:
        shape.model.model_validate(item)
    except ValidationError:
        return "invalid_record"
    return None


# orjson reads 1024 levels but writes 254, `json` about 1000 (less the caller's stack): a
# record read but nested too deep to be written again failed every poll of its user when
# its snapshot was stored. Deeper records are invalid, whichever parser read them.
MAX_RECORD_DEPTH = 254


def _orjson_writes(value: Any) -> bool:
    """orjson can write it: nested no deeper than MAX_RECORD_DEPTH (a list of records, one
    level more: a record at the limit is then checked on its own)."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def _storable(item: dict[str, Any]) -> bool:
    """A record `json` read (orjson refused the page) can be kept as it is: its id encodes
    (a lone surrogate raised in every event id of the record, on every poll), no number is
    NaN or infinite (stored as null, they made every poll see a change), and it is nested
    no deeper than MAX_RECORD_DEPTH. Lone surrogates elsewhere are kept, escaped."""
    try:
        item["id"].encode()
    except UnicodeEncodeError:
        return False
    stack: list[tuple[Any, int]] = [(item, 1)]
    while stack:  # no recursion: the record may be nested hundreds deep
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, float) and not math.isfinite(child):
                return False
            if isinstance(child, dict | list):
                if depth >= MAX_RECORD_DEPTH:
                    return False
                stack.append((child, depth + 1))
    return True
