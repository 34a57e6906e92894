"""The shape of the code: no import cycle (not even under TYPE_CHECKING), and no layer
importing one above it; every Redis key spelled in store/keys.py only."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"

# The rooms, bottom to top: the pure core (PURE); tracing; store and upstream; the read side
# (reading/) and delivery/ side by side; operations, api, app; cli, sim, bench.
_ABOVE_ROOMS = ["service.operations", "service.api", "service.app"]
_TOOLS = ["service.cli", "service.sim", "service.bench"]
PURE = ["service.changes", "service.contract", "service.reading.plan", "service.config",
        "service.endpoint_health", "service.httpspec", "service.errors", "service.timefmt",
        "service.jsonfmt", "service.redis_url", "service.cursor", "service.user_ids",
        "service.resources", "service.linked_account", "service.mass_drop"]  # fmt: skip

# a module under the first prefix never imports one under any of the others
LOWER_LAYERS = {
    # the pure packages speak for every layer (store commits an outbox, the contract is the
    # webhook bodies' and the admin API's models) and import none of them (below: only pure)
    "service.changes": ["service.reading", "service.tracing"],
    "service.contract": ["service.reading", "service.tracing"],
    # every layer opens its spans through it, so it stands below them all
    "service.tracing": ["service.store", "service.upstream", "service.delivery", "service.reading",
                        *_ABOVE_ROOMS, "service.cli"],
    # store and upstream never import each other
    "service.store": ["service.upstream", "service.delivery", "service.reading", *_ABOVE_ROOMS,
                      *_TOOLS],
    "service.upstream": ["service.store", "service.delivery", "service.reading", *_ABOVE_ROOMS],
    # the two sides meet in Redis only
    "service.delivery": ["service.upstream", "service.reading", *_ABOVE_ROOMS],
    "service.reading": ["service.delivery", *_ABOVE_ROOMS, *_TOOLS],
    "service.operations": ["service.api", "service.app"],
    "service.api": ["service.app"],
}  # fmt: skip

# Inside reading/: schedule claims, runner runs one read; the readers know neither, and one
# reader never reaches into another (a feed read reaches into its parts: feed_run, feed_users).
_DRIVERS = ["service.reading.schedule", "service.reading.runner"]
_PLANNER = "service.reading.planner"
_READERS = [
    ["service.reading.user_poll"],
    ["service.reading.account_feed", "service.reading.feed_run", "service.reading.feed_users"],
    ["service.reading.user_listing"],
    # GET /accounts, once account discovery moves in (service/account_discovery.py today)
    ["service.reading.account_listing"],
    ["service.reading.overdue"],
    [_PLANNER],
]
READING = [
    *((reader, _DRIVERS) for group in _READERS for reader in group if reader != _PLANNER),
    # the planner observes each read's result (read_result.ReadResult), not the runner
    (_PLANNER, _DRIVERS),
    # what a read reports stands below whoever reports or observes it
    ("service.reading.read_result", [*_DRIVERS, *(r for g in _READERS for r in g)]),
    *((reader, [other for g in _READERS if g is not group for other in g])
      for group in _READERS for reader in group),
    ("service.reading.runner", ["service.reading.schedule", *(r for g in _READERS for r in g)]),
    # the parts of a feed read never import the whole
    ("service.reading.feed_run", ["service.reading.account_feed", "service.reading.feed_users"]),
    ("service.reading.feed_users", ["service.reading.account_feed"]),
]  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in SERVICE.rglob("*.py"):
        name = ".".join(path.relative_to(SERVICE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports() -> dict[str, set[str]]:
    """Every import of a service module by another, wherever it stands (functions and
    `if TYPE_CHECKING:` blocks included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _pure(module: str) -> bool:
    return any(_under(module, p) for p in PURE)


def test_no_import_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_no_layer_imports_one_above_it() -> None:
    breaches = [
        (module, target)
        for module, targets in _imports().items()
        for lower, above in [*LOWER_LAYERS.items(), *READING]
        if _under(module, lower)
        for target in targets
        if any(_under(target, a) for a in above)
    ]
    assert breaches == []


def test_the_pure_core_imports_only_itself() -> None:
    breaches = [
        (module, target)
        for module, targets in _imports().items()
        if _pure(module)
        for target in targets
        if target != "service" and not _pure(target)
    ]
    assert breaches == []


def test_the_pure_core_does_no_io() -> None:
    """Pure modules import no Redis, no HTTP, no store, no clock-driven scheduler."""
    impure = ("redis", "aiohttp", "apscheduler", "service.store", "service.upstream")
    for module, path in _modules().items():
        if not _pure(module):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            assert not [n for n in names if n.startswith(impure)], (module, names)


def test_redis_keys_are_spelled_in_keys_py_only() -> None:
    spelled = [
        str(path.relative_to(SERVICE.parent))
        for path in [*SERVICE.rglob("*.py"), *Path(__file__).parent.glob("*.py")]
        if path.name != "keys.py"
        and path != Path(__file__)
        and any(s in path.read_text() for s in ('"lw:', "'lw:", "keys.PREFIX"))
    ]
    assert spelled == []


# How a schedule's score encodes a lease (LEASED + its expiry), a hold (negative) or a due
# time (ms): the store's alone. A read says what becomes of its lease (store/outcome.py:
# EndLease, KeepLease) and the store writes the score.
_SCORE_NAMES = {
    "LEASED", "KEEP_LEASE", "hold", "lease_ms", "due_score", "outcome_score", "due_or_expiry_ms",
}  # fmt: skip


def test_only_the_store_knows_schedule_scores() -> None:
    breaches = []
    for module, path in _modules().items():
        if _under(module, "service.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service.store"):
                names = [a.name for a in node.names if a.name in _SCORE_NAMES]
            elif isinstance(node, ast.Attribute):  # scripts.LEASED (a `hold` may be anyone's)
                names = [node.attr] if node.attr in _SCORE_NAMES - {"hold"} else []
            elif isinstance(node, ast.arg | ast.keyword):  # a score passed or taken
                names = [node.arg] if node.arg == "next_score" else []
            elif isinstance(node, ast.Name):
                names = [node.id] if node.id == "next_score" else []
            else:
                continue
            breaches += [(module, name) for name in names]
    assert breaches == []
