"""How every simulated list endpoint pages: timestamps, the query, the keyset order, cursors.

Pure, no I/O. A listing is a *source* (records in a stable order, each at a numbered position)
read from just after the position the cursor names, so a page costs the records it returns
plus those it skips, never a pass over the whole listing. The cursor is opaque to clients and
carries the filters, as StackOne's does: later pages ignore the query's filters.
"""

from __future__ import annotations

import base64
import binascii
import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from service.sim.faults import Faults

Record = dict[str, Any]
# a listing's (position, record) pairs after a position, positions strictly increasing
Source = Callable[[int], Iterable[tuple[int, Record]]]
# whether a record passes a filter given the filter's query value
Matcher = Callable[[Record, str], bool]

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
UPDATED_AFTER = ("filter[updated_after]", "updated_after")  # the second is deprecated
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BAD_CURSOR = "next is not a valid cursor"

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Keyset",
    "Matcher",
    "PageRequest",
    "Record",
    "Source",
    "iso_ms",
    "parse_iso_ms",
    "take_page",
    "updated_after",
]


def iso_ms(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and `Z`."""
    return _iso_of_ms(round(ts * 1000))


def _iso_of_ms(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_ms(value: str) -> int:
    """Epoch milliseconds of an ISO 8601 string (naive means UTC); ValueError when invalid."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # timedelta floor division is exact, unlike float timestamps
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def updated_after(after_ms: int) -> Callable[[Record], bool]:
    """A predicate: the record's updated_at is strictly after `after_ms`."""
    # Records the simulator stamps are in iso_ms's fixed-width form, which sorts as text:
    # comparing strings keeps an incremental read of a 100,000-record account cheap.
    bound = _iso_of_ms(after_ms)

    def keep(record: Record) -> bool:
        updated = record.get("updated_at")
        if not isinstance(updated, str):
            return False  # no timestamp: cannot be "updated after" anything
        if len(updated) == 24 and updated[10] == "T" and updated[19] == "." and updated[-1] == "Z":
            return updated > bound
        try:
            return parse_iso_ms(updated) > after_ms
        except ValueError:
            return False

    return keep


K = TypeVar("K", bound=Hashable)


class Keyset(Generic[K]):
    """Keys (never None) in first-insertion order, each at a fixed position, so that a cursor
    can say "after position p" and the next page resumes there in O(log n). A key that is
    updated keeps its position; one removed and added again goes to the end."""

    def __init__(self) -> None:
        self._position: dict[K, int] = {}  # live keys, in position order
        # parallel and ordered by position; a removed key leaves None until a compaction
        self._keys: list[K | None] = []
        self._positions: list[int] = []
        self._next = 0

    def __len__(self) -> int:
        return len(self._position)

    def position(self, key: K) -> int | None:
        return self._position.get(key)

    def add(self, key: K) -> None:
        """Append `key` unless it is already here."""
        if key not in self._position:
            self._append(key)

    def update(self, keys: Iterable[K]) -> None:
        """Append each of `keys` that is not already here (in their order)."""
        known = self._position
        for key in keys:
            if key not in known:
                self._append(key)

    def _append(self, key: K) -> None:
        self._position[key] = self._next
        self._keys.append(key)
        self._positions.append(self._next)
        self._next += 1

    def discard(self, key: K) -> None:
        position = self._position.pop(key, None)
        if position is None:
            return
        self._keys[bisect_left(self._positions, position)] = None
        if len(self._keys) > 2 * len(self._position) + 64:
            # compact once removed keys are the majority (amortised O(1) a removal).
            # Positions do not change, so cursors already handed out stay valid.
            self._keys = list(self._position)
            self._positions = list(self._position.values())

    def after(self, position: int) -> Iterator[tuple[int, K]]:
        """(position, key) of the keys after `position`, in order."""
        keys, positions = self._keys, self._positions  # a compaction swaps the lists
        # indices, not slices: a page must not copy the rest of the listing
        for i in range(bisect_right(positions, position), len(positions)):
            key = keys[i]
            if key is not None:
                yield positions[i], key


@dataclass
class PageRequest:
    """One page's question: where to resume and which records to keep."""

    tag: str  # the endpoint; a cursor is only good for the endpoint that made it
    size: int
    position: int = -1  # the last position already returned
    index: int = 0  # 0-based page number in this walk (for Faults.page_delays)
    after_ms: int | None = None
    filters: dict[str, str] = field(default_factory=dict)  # others, by query parameter

    @classmethod
    def parse(cls, tag: str, query: Mapping[str, str], filters: Collection[str]) -> PageRequest:
        """From a request's query; ValueError (a 400) when it is not understood."""
        raw_size = query.get("page_size") or ""
        try:
            size = int(raw_size) if raw_size.strip() else DEFAULT_PAGE_SIZE
        except ValueError:
            raise ValueError("page_size must be an integer") from None
        size = max(1, min(MAX_PAGE_SIZE, size))
        if query.get("next"):
            return cls._resume(tag, size, query["next"], filters)
        after = None
        for name in UPDATED_AFTER:
            if query.get(name):
                try:
                    ms = parse_iso_ms(query[name])
                except ValueError:
                    raise ValueError(f"{name} is not an ISO 8601 date-time") from None
                after = ms if after is None else max(after, ms)
        given = {name: query[name] for name in filters if query.get(name)}
        return cls(tag, size, after_ms=after, filters=given)

    @classmethod
    def _resume(cls, tag: str, size: int, cursor: str, filters: Collection[str]) -> PageRequest:
        try:
            state = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except (binascii.Error, ValueError):
            raise ValueError(_BAD_CURSOR) from None
        if not isinstance(state, dict) or state.get("e") != tag:
            raise ValueError(_BAD_CURSOR)
        position, index, after, given = (state.get(k) for k in ("p", "n", "f", "q"))
        if not (
            type(position) is int
            and position >= -1
            and type(index) is int
            and index >= 0
            and (after is None or type(after) is int)
            and isinstance(given, dict)
            and set(given) <= set(filters)
            and all(isinstance(v, str) for v in given.values())
        ):
            raise ValueError(_BAD_CURSOR)
        return cls(tag, size, position, index, after, given)

    def cursor(self, position: int) -> str:
        """The `next` that resumes after `position`, with this request's filters."""
        state = {"e": self.tag, "p": position, "n": self.index + 1, "f": self.after_ms}
        raw = json.dumps({**state, "q": self.filters}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def keeps(self, matchers: Mapping[str, Matcher]) -> Callable[[Record], bool]:
        """The predicate of this request's filters; those without a matcher are the
        source's business (it narrows the listing itself)."""
        newer = updated_after(self.after_ms) if self.after_ms is not None else None
        checks = [(matchers[k], v) for k, v in self.filters.items() if k in matchers]
        if not checks:
            # the common case (a walk, or a change feed) costs one call a record at most
            return newer or _everything

        def keep(record: Record) -> bool:
            if newer is not None and not newer(record):
                return False
            return all(match(record, value) for match, value in checks)

        return keep


def _everything(record: Record) -> bool:
    return True


def take_page(
    source: Source, keep: Callable[[Record], bool], request: PageRequest, faults: Faults
) -> tuple[list[Record], str | None]:
    """One page of the records `keep` accepts, read from the source after the request's
    position, and the next cursor (None on the last page). The paging faults apply here."""
    step = min(request.size, faults.max_page_records or request.size)
    chunk: list[Record] = []
    last, more = request.position, False
    for position, record in source(request.position):
        if not keep(record):
            continue
        if len(chunk) == step:
            # one more matching record exists: the page is not the last (and the next page
            # reads again from `last`, so nothing scanned here is lost)
            more = True
            break
        chunk.append(record)
        last = position
    if faults.runaway_next or (faults.trailing_empty_page and chunk):
        more = True
    return chunk, request.cursor(last) if more else None
