"""The user documentation stays true to the tree: README.md and docs/*.md, checked offline in well under a second.

* Every relative link resolves: the file exists, and a ``#fragment`` names a heading of the Markdown file it
  points to (GitHub's anchors).
* In the pages' code (fenced blocks and inline spans), every ``make TARGET`` is a Makefile target and every
  ``producer COMMAND --flag`` a command of the CLI with that option.
* The README's configuration table lists every setting of ``workers.settings.Settings``, and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import click
import pytest

from producer.cli import cli
from workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (numbered when repeated)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page: Path) -> None:
    text = FENCE.sub("", page.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page_id(page)} links to missing {target}"
        if fragment and resolved.suffix == ".md":
            assert fragment in anchors(resolved), f"{page_id(page)} links to {target}: no such heading"


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w.-]*):", (ROOT / "Makefile").read_text(), re.M))


def code(text: str) -> str:
    """The page's code: fenced blocks (comments cut) and inline code spans."""
    blocks = [line.split("#", 1)[0] for block in FENCE.findall(text) for line in block.splitlines()]
    spans = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", FENCE.sub("", text))]
    return "\n".join(blocks + spans)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_make_targets_exist(page: Path) -> None:
    named = set(re.findall(r"(?<![\w-])make ([a-z][\w-]*)", code(page.read_text())))
    assert named - make_targets() == set(), f"{page_id(page)} names make targets the Makefile lacks"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_producer_commands_exist(page: Path) -> None:
    group = cli
    assert isinstance(group, click.Group)
    checked = 0
    commands = [part for line in code(page.read_text()).splitlines() for part in re.split(r"&&|;|\|", line)]
    for command in commands:
        match = re.search(r"(?:^|[\s/])producer ([a-z][a-z-]*|-\S+)(.*)", command)  # not `producer CMD`
        if not match:
            continue
        sub, rest = match.groups()
        owner: click.Command = group
        if sub.startswith("-"):  # an option of producer itself: --version
            rest = f"{sub}{rest}"
        else:
            assert sub in group.commands, f"{page_id(page)} runs `producer {sub}`, which is no command"
            owner = group.commands[sub]
        options = {opt for param in owner.params for opt in param.opts + param.secondary_opts}
        options |= {"--help", "-h"}
        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", rest):
            assert flag in options, f"{page_id(page)} runs `producer {sub} {flag}`, which it does not take"
        checked += 1
    if page == README:
        assert checked >= 10, "the README's command examples were not found"


def test_readme_configuration_table_lists_every_setting() -> None:
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    settings = {f.name.upper() for f in fields(Settings)}
    assert settings - listed == set(), "settings missing from the README's configuration table"
    assert listed - settings == set(), "the README's configuration table lists variables that are not settings"


def python_modules(folder: Path) -> set[str]:
    return {path.stem for path in folder.glob("*.py") if not path.stem.startswith("__")}


def layout_entries() -> dict[str, str]:
    """The README's layout block: folder -> the text after its description's colon (continuations joined)."""
    block = README.read_text().split("## Layout", 1)[1]
    block = FENCE.search(block).group(0).strip("`\n")
    entries: dict[str, str] = {}
    folder = ""
    for line in block.splitlines():
        head = re.match(r"(\S+/)\s+(.*)", line)
        if head:
            folder, text = head.groups()
            entries[folder] = text.split(":", 1)[1] if ":" in text else ""
        else:
            entries[folder] += " " + line.strip()
    return entries


def test_readme_layout_names_every_module_of_every_package_and_nothing_else() -> None:
    entries = layout_entries()
    checked = 0
    for folder, text in entries.items():
        path = ROOT / folder
        if not (path / "__init__.py").is_file() or folder == "tests/":
            continue
        named = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", re.sub(r"\(\+[^)]*\)|shared:", "", text)))
        assert named == python_modules(path), f"README layout, {folder}: lists {sorted(named)}"
        checked += 1
    packages = {
        str(p.parent.relative_to(ROOT)) + "/"
        for p in ROOT.glob("*/**/__init__.py")
        if not p.parent.relative_to(ROOT).parts[0].startswith(".")
        and "build" not in p.parts
        and python_modules(p.parent)
        and p.parent.name not in {"tests", "simulated"}
    }
    assert packages - set(entries) == set(), "packages the README's layout leaves out"
    assert checked >= 12


def test_architecture_table_names_every_module_of_its_package() -> None:
    rows = re.findall(r"^\| `([\w.]+)` \| (.*?) \| [^|]* \|$", (ROOT / "ARCHITECTURE.md").read_text(), re.M)
    assert len(rows) >= 8
    for package, owns in rows:
        named = set(re.findall(r"`(\w+)\.py`", owns))
        assert named == python_modules(ROOT / package.replace(".", "/")), f"ARCHITECTURE.md, {package}"
