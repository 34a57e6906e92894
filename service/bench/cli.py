"""`lms-webhooks bench [--scenario NAME]... [--scale F] [--output FILE]`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from service.bench.report import run, table
from service.bench.scenarios import SCENARIOS


def bench_command(scenarios: list[str] | None, scale: float, output: str | None) -> int:
    selected = scenarios or list(SCENARIOS)
    unknown = [name for name in selected if name not in SCENARIOS]
    if unknown or not 0 < scale <= 1:
        problem = f"unknown scenario {unknown}" if unknown else "--scale must be in (0, 1]"
        print(f"bench: {problem}; scenarios: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    report = asyncio.run(run(selected, scale))
    text = json.dumps(report, indent=2)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
    print(table(report), file=sys.stderr)
    return 0
