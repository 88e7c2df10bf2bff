"""README.md and docs/*.md: every relative link and #anchor resolves, and the README stays short.

Plain text only (no TensorFlow, no project imports): this runs in well under a second.
Anchors follow GitHub's slugs: the heading's rendered text, lower-cased, with every character that
is not a letter, digit, space, hyphen or underscore dropped, spaces turned into hyphens, and
repeated headings numbered -1, -2, ...
"""
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def rendered(heading: str) -> str:
    """A heading's text as GitHub renders it: link text kept, markup dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = INLINE_CODE.sub(lambda m: m.group(2), text)
    return re.sub(r"<[^>]+>", "", text)


def slug(heading: str) -> str:
    text = rendered(heading).strip().lower()
    kept = "".join(c for c in text
                   if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path):
    """(line number, target) of every relative link in prose (not in code)."""
    for number, line in prose_lines(path.read_text()):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            yield number, target


def test_slug_follows_github():
    assert slug("A default that adapts to the teacher: `distill.width: auto`") == \
        "a-default-that-adapts-to-the-teacher-distillwidth-auto"
    assert slug("Teachers of real size: keras.applications ResNet50 and EfficientNetB0") == \
        "teachers-of-real-size-kerasapplications-resnet50-and-efficientnetb0"
    assert slug("The search on a 1.7 M-param teacher") == "the-search-on-a-17-m-param-teacher"
    assert slug("What `make run` gives you") == "what-make-run-gives-you"
    assert slug("`data.cache_mb` and the 2:4 pattern") == "datacache_mb-and-the-24-pattern"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    broken = []
    for number, target in links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(file_part)).resolve() if file_part else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README)}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_readme_is_short_and_keeps_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines (max {MAX_README_LINES})"
    assert any(line.startswith("make run") for line in lines)
    assert any(line.startswith("make test") for line in lines)
    text = "\n".join(lines)
    start, end = text.find("<!-- make-run-summary -->"), text.find("<!-- /make-run-summary -->")
    assert 0 <= start < end, "the make-run summary markers are missing or out of order"
