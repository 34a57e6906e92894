"""The docs a newcomer walks: the README short and its quick start the Makefile's, every
link between README.md and docs/ leading to a page and a heading that exist, and
docs/configuration.md generated from Settings, every key of config/schema.json in it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.contract.config_guide import config_guide
from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_leads_to_a_page_and_a_heading(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: ...
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert broken == []


def test_the_readme_is_short_and_starts_with_the_makefiles_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick_start and "make test" in quick_start
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"the README does not lead to {page.name}"


def test_the_configuration_page_is_generated_from_settings() -> None:
    assert (ROOT / "docs/configuration.md").read_text() == config_guide(), "run `make docs`"


def _paths(schema: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
        if ref:
            section = defs[ref.rsplit("/", 1)[1]]
            found += _paths(section, defs, f"{prefix}{name}{'[].' if 'items' in prop else '.'}")
        else:
            found.append(prefix + name)
    return found


def test_every_key_of_the_schema_is_documented() -> None:
    schema = json.loads((ROOT / "config/schema.json").read_text())
    page = (ROOT / "docs/configuration.md").read_text()
    keys = _paths(schema, schema["$defs"])
    assert "polling.interval" in keys and "endpoints[].secret" in keys
    assert [k for k in keys if f"| `{k}` |" not in page] == []


# a path in the repository a page names, in backquotes or a link: `service/reading/plan.py`
_PATH = re.compile(r"(?<![\w/.-])((?:service|tests|scripts|config|deploy|docs)/[\w./-]*\w)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_a_page_names_exists(page: Path) -> None:
    """Moved code leaves no page pointing at where it was (the file list drifted before)."""
    named = set(_PATH.findall(page.read_text(encoding="utf-8")))
    missing = sorted(p for p in named if not (ROOT / p).exists() and "*" not in p)
    assert missing == []
