"""The documentation's relative links: README.md and docs/*.md name only files that exist
and headings that exist, and every chart in docs/ is shown by some page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def _prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a page's headings, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The relative link targets of a page (web addresses and mail left out)."""
    targets = []
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        targets += [t for t in _LINK.findall(line) if not _SCHEME.match(t)]
    return targets


def broken_links(page: Path) -> list[str]:
    """Each link of the page whose file or heading does not exist, with the reason."""
    broken = []
    for target in links(page):
        path_part, _, anchor = target.partition("#")
        target_path = (page.parent / path_part).resolve() if path_part else page
        if not target_path.exists():
            broken.append(f"{target}: no file {target_path}")
        elif anchor and target_path.suffix == ".md" and anchor not in anchors(target_path):
            broken.append(f"{target}: no heading with anchor #{anchor} in {target_path.name}")
        elif anchor and target_path.suffix != ".md":
            broken.append(f"{target}: an anchor into a file that is not a page")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_names_an_existing_file_and_heading(page: Path) -> None:
    assert links(page), f"{page.name} has no relative links: is the link pattern still right?"
    assert broken_links(page) == []


def test_the_pages_link_to_each_other() -> None:
    readme_targets = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme_targets, f"README.md does not link {page.name}"


def test_every_chart_in_docs_is_shown_by_a_page() -> None:
    charts = sorted((ROOT / "docs").glob("*.png"))
    assert charts, "no charts in docs/"
    shown = {(page.parent / t.partition("#")[0]).resolve() for page in PAGES for t in links(page)}
    assert [c.name for c in charts if c.resolve() not in shown] == []


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("See [the design](docs/nowhere.md).\n", encoding="utf-8")
    missing = (tmp_path / "docs" / "nowhere.md").resolve()
    assert broken_links(page) == [f"docs/nowhere.md: no file {missing}"]


def test_a_missing_heading_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## Two `words`, here\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#two-words-here) [self](#mine) [bad](other.md#three)\n\n## Mine\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["other.md#three: no heading with anchor #three in other.md"]


def test_links_inside_code_blocks_and_web_addresses_are_not_checked(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```\n[x](missing.md)\n```\n[web](https://example.com/a.md) [mail](mailto:a@b.c)\n",
        encoding="utf-8",
    )
    assert links(page) == []


def test_repeated_headings_get_numbered_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Results\n\n## Results\n\n## Results\n", encoding="utf-8")
    assert anchors(page) == {"results", "results-1", "results-2"}
