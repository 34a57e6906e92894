"""Whether the tests can have a real browser: Debian's Chromium, driven by Playwright.
CI fails without one (scripts/ensure-chromium installs it), a dev machine skips."""

from __future__ import annotations

import importlib.util
import os

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def require_chromium() -> str | None:
    """None when Playwright and Chromium are there, else why not."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (scripts/ensure-chromium, or apt-get install -y chromium)"
    return None
