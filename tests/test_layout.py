"""The shape of the code: no import cycle (not even under TYPE_CHECKING), and no layer
importing one above it; every Redis key spelled in store/keys.py only."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"

# a module under the first prefix never imports one under any of the others
_READERS = [
    "service.poller",
    "service.feed",
    "service.feed_run",
    "service.feed_users",
    "service.discovery",
    "service.account_discovery",
    "service.overdue",
    "service.budget_planner",
]
_ABOVE_READERS = ["service.schedule", "service.operations", "service.api", "service.app"]
LOWER_LAYERS = {
    "service.store": ["service.upstream", "service.delivery", *_READERS, "service.schedule",
                      "service.poll_runner", "service.operations",
                      "service.api", "service.app", "service.cli", "service.sim",
                      "service.bench"],
    "service.upstream": ["service.store", "service.delivery", *_READERS,
                         "service.schedule", "service.poll_runner",
                         "service.operations", "service.api", "service.app"],
    "service.delivery": ["service.upstream", *_READERS, "service.schedule",
                         "service.poll_runner", "service.operations",
                         "service.api", "service.app"],
    # one reader never reaches into another, except a feed read into its parts
    "service.poller": ["service.poll_runner", "service.delivery", "service.feed",
                       "service.discovery", "service.overdue", "service.budget_planner",
                       *_ABOVE_READERS],
    "service.feed_run": ["service.feed", "service.feed_users", "service.poller",
                         "service.discovery", "service.poll_runner", "service.delivery",
                         *_ABOVE_READERS],
    "service.feed_users": ["service.feed", "service.poller", "service.discovery",
                           "service.poll_runner", "service.delivery", *_ABOVE_READERS],
    "service.feed": ["service.poller", "service.discovery", "service.poll_runner",
                     "service.delivery", *_ABOVE_READERS],
    "service.discovery": ["service.poller", "service.feed", "service.poll_runner",
                          "service.delivery", *_ABOVE_READERS],
    "service.account_discovery": ["service.poller", "service.feed", "service.discovery",
                                  "service.poll_runner", "service.delivery", *_ABOVE_READERS],
    "service.overdue": ["service.schedule", "service.poll_runner", "service.poller",
                        "service.feed", "service.delivery", "service.operations",
                        "service.api", "service.app"],
    "service.poll_runner": ["service.schedule", "service.delivery", *_READERS,
                            "service.operations", "service.api", "service.app"],
    "service.budget_planner": ["service.schedule", "service.api", "service.app"],
    "service.schedule": ["service.delivery", "service.operations", "service.api",
                         "service.app"],
    "service.operations": ["service.api", "service.app"],
    "service.api": ["service.app"],
    # the contract (the models of the webhook bodies and the admin API's answers) is what
    # every layer may speak in: it imports none of them, only pure modules
    "service.contract": ["service.store", "service.upstream", "service.delivery", *_READERS,
                         "service.schedule", "service.poll_runner", "service.operations",
                         "service.api", "service.app", "service.cli", "service.sim",
                         "service.bench", "service.tracing"],
    # every layer opens its spans through it, so it stands below them all
    "service.tracing": ["service.store", "service.upstream", "service.delivery", *_READERS,
                        "service.schedule", "service.poll_runner", "service.operations",
                        "service.api", "service.app", "service.cli"],
}  # fmt: skip
PURE = ["service.detect", "service.outbox", "service.endpoint_health", "service.httpspec",
        "service.events", "service.config", "service.errors", "service.timefmt",
        "service.jsonfmt", "service.budget", "service.redis_url", "service.cursor",
        "service.user_ids", "service.resources", "service.contract",
        "service.contract.webhooks", "service.contract.admin", "service.linked_account",
        "service.mass_drop"]  # fmt: skip


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
        for lower, above in LOWER_LAYERS.items()
        if _under(module, lower)
        for target in targets
        if any(_under(target, a) for a in above)
    ]
    assert breaches == []


def test_the_pure_core_does_no_io() -> None:
    """Pure modules import no Redis, no HTTP, no store, no clock-driven scheduler."""
    impure = ("redis", "aiohttp", "apscheduler", "service.store", "service.upstream")
    for module in PURE:
        path = _modules()[module]
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
