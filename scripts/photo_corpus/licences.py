"""Licences: DEP-5 debian/copyright and the README credit files GCompris ships next to its images."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .sources import Pick

# GCompris mounts its source tree at this resource prefix: /gcompris/src/x is the source's src/x.
GCOMPRIS_RCC_PREFIX = "/gcompris/"


@dataclass(frozen=True)
class CreditStanza:
    """One `Files:` paragraph of a DEP-5 copyright file or of a GCompris README credit file."""

    patterns: tuple[str, ...]
    licence: str | None
    copyright: str | None
    source_url: str | None


@dataclass(frozen=True)
class Licence:
    """What is known of one photograph's licence and author, and which document said so."""

    licence: str
    credit: str | None
    credit_url: str | None
    licence_from: str


_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):(?:[ \t]+(.*))?$")


def parse_credit_stanzas(text: str) -> list[CreditStanza]:
    """The `Files:` paragraphs of a DEP-5 copyright file or of a README in the same `Field: value` style.

    Paragraphs are separated by blank lines; a line that does not start a field continues the last
    one (DEP-5 indents continuations, GCompris's READMEs do not). Paragraphs without `Files:` (the
    header, stand-alone licence texts) are skipped. `License:` keeps its first line only (the name).
    """
    stanzas = []
    for paragraph in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        fields = _paragraph_fields(paragraph)
        if "files" not in fields:
            continue
        stanzas.append(
            CreditStanza(
                patterns=tuple(" ".join(fields["files"]).split()),
                licence=_first_line(fields.get("license")),
                copyright="; ".join(fields["copyright"]) if fields.get("copyright") else None,
                source_url=_first_line(fields.get("source")),
            )
        )
    return stanzas


def _paragraph_fields(paragraph: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in paragraph.splitlines():
        match = _FIELD.match(line)
        if match:
            current = fields.setdefault(match[1].lower(), [])
            value = (match[2] or "").strip()
        elif current is not None:
            value = line.strip()
        else:
            continue
        if value and value != ".":
            current.append(value)
    return fields


def _first_line(lines: list[str] | None) -> str | None:
    return lines[0] if lines else None


def match_credit(stanzas: Sequence[CreditStanza], path: str, anchored: bool) -> tuple[CreditStanza, str] | None:
    """The stanza that governs `path` (the last match, as DEP-5 says) and the pattern that matched.

    `anchored` patterns match the whole path (a source-tree path); otherwise a pattern may also match
    a tail of the path, because an unpacked package installs `nature/Aqua.jpg` as
    `usr/share/backgrounds/mate/nature/Aqua.jpg`.
    """
    found = None
    for stanza in stanzas:
        for pattern in stanza.patterns:
            if fnmatch.fnmatchcase(path, pattern) or (not anchored and fnmatch.fnmatchcase(path, f"*/{pattern}")):
                found = (stanza, pattern)
                break
    return found


def licence_from_stanza(stanza: CreditStanza, document: str, pattern: str) -> Licence:
    """The Licence a matched stanza gives. A catch-all `Files: *` speaks for the whole package, not for
    one image: its licence is the package's, its copyright holders are not the photograph's author."""
    if pattern == "*":
        return Licence(
            stanza.licence or "unknown", None, None, f"{document} [Files: *] (package licence; no per-image credit)"
        )
    return Licence(stanza.licence or "unknown", stanza.copyright, stanza.source_url, f"{document} [Files: {pattern}]")


@dataclass(frozen=True)
class PackageLicences:
    """The machine-readable licence documents of one unpacked package."""

    copyright_file: str | None = None
    copyright_stanzas: Sequence[CreditStanza] = ()
    # README credit files inside .rcc files: {(rcc path in package, README's directory): stanzas}
    rcc_readmes: dict[tuple[str, str], Sequence[CreditStanza]] = field(default_factory=dict)


def read_copyright(root: Path, package: str) -> PackageLicences:
    """The package's /usr/share/doc/<package>/copyright, parsed (empty if absent or unreadable)."""
    relative = f"usr/share/doc/{package}/copyright"
    try:
        text = (root / relative).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return PackageLicences()
    return PackageLicences(copyright_file=relative, copyright_stanzas=parse_credit_stanzas(text))


def resolve_licence(pick: Pick, licences: PackageLicences) -> Licence:
    """The licence of one photograph: a README credit file next to it inside its .rcc, else the
    package's debian/copyright (for .rcc entries on the source-tree path, trying the original suffixes
    too, since GCompris converts its images to .webp at build time); then what the allow-list says
    (`Pick.licence`/`credit`/`credit_url`) replaces what the documents gave."""
    found = (_readme_licence(pick, licences) if pick.rcc_path else None) or _copyright_licence(pick, licences)
    if found is None:
        found = Licence("unknown", None, None, "nothing in the package says")
    if pick.noted_in is None:
        return found
    noted = f"allow-list, from {pick.noted_in}"
    return Licence(
        licence=pick.licence or found.licence,
        credit=pick.credit or found.credit,
        credit_url=pick.credit_url or found.credit_url,
        licence_from=noted if pick.licence else f"{noted}; licence: {found.licence_from}",
    )


def _readme_licence(pick: Pick, licences: PackageLicences) -> Licence | None:
    assert pick.rcc_path is not None
    entry = PurePosixPath(pick.rcc_path)
    # The nearest README wins: a directory's README speaks for the files under it.
    for directory in entry.parents:
        stanzas = licences.rcc_readmes.get((pick.path, str(directory)))
        if stanzas is None:
            continue
        relative = str(entry.relative_to(directory))
        matched = match_credit(stanzas, relative, anchored=True)
        if matched:
            return licence_from_stanza(matched[0], f"{pick.path}:{directory}/README", matched[1])
    return None


def _copyright_licence(pick: Pick, licences: PackageLicences) -> Licence | None:
    if not licences.copyright_file:
        return None
    if pick.rcc_path:
        source_path = pick.rcc_path.removeprefix(GCOMPRIS_RCC_PREFIX)
        stem = str(PurePosixPath(source_path).with_suffix(""))
        for candidate in (source_path, *(stem + suffix for suffix in (".jpg", ".jpeg", ".png", ".svg"))):
            matched = match_credit(licences.copyright_stanzas, candidate, anchored=True)
            if matched and matched[1] != "*":
                return licence_from_stanza(matched[0], licences.copyright_file, matched[1])
        matched = match_credit(licences.copyright_stanzas, source_path, anchored=True)
    else:
        matched = match_credit(licences.copyright_stanzas, pick.path, anchored=False)
    return licence_from_stanza(matched[0], licences.copyright_file, matched[1]) if matched else None
