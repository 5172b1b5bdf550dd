"""Where each of a run's objects lives, and how far each image has got.

Every output key is a pure function of (run id, input name, stage), so any stage can tell whether
its work is already done by looking for its output, and re-running a run resumes it.

Layout under ``runs/<run>/``::

    manifest.json              the run: source, ordered input names, pipeline, expected columns
    started.json               when the run was last enqueued (the report's clock starts there)
    denoised/<stem>.png        CPU stage output
    sr/<stem>.png              GPU stage output (the 4x image)
    rows/<stem>.csv            the image's submission row; written last, it marks the image done
    failed/<stem>.json         why the image failed (it is then done too, as failed)
    meta/<stem>.<stage>.json   timing and sizes, for reports
    attempts/<stem>.<stage>.json   worker deaths and unexpected errors at a stage (only once one happened)
    input/<name>               the input itself, when a local source is uploaded to an object store
    submission.csv, failures.json, summary.json, report.html   written by the aggregator

Every backend must be able to hold every one of these keys, so names are checked against the
strictest limit of each (:func:`check_fits`): 255 bytes per path segment on local filesystems,
1024 bytes per key on S3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath

from workers.errors import InvalidKeyError
from workers.io.storage import Storage, check_key, join_key

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LONGEST_RUN_ID = "r" * 128  # the longest id check_run_id allows: names are checked against it
SEGMENT_BYTES = 255  # longest path segment (file name) on local filesystems: ext4, XFS, btrfs, APFS, NTFS
KEY_BYTES = 1024  # longest S3 object key, the store's own prefix included
META_STAGES = ("denoise", "upscale")  # the per-image stages: each writes meta/, and attempts/ when one went wrong


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise InvalidKeyError(f"invalid run id {run_id!r} (letters, digits, '.', '_', '-'; up to 128)")
    return run_id


def check_name(name: str) -> str:
    """An input name is one path segment of valid UTF-8: no directories, no traversal.

    Raises:
        InvalidKeyError: a ``/``, an unsafe key, or bytes that are not UTF-8 (a local file name the
            filesystem holds but no object store, CSV or report can).
    """
    if "/" in name:
        raise InvalidKeyError(f"input name {name!r} must not contain '/'")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKeyError(f"input name '{display_name(name)}' is not valid UTF-8 (object keys, "
                              "submission.csv and the report need UTF-8 names): rename the file") from None
    return check_key(name)


def check_fits(name: str, store_prefix: str = "") -> str:
    """``name`` if every key a run derives from it fits every backend, for any run id.

    Each path segment of each key (``meta/<stem>.upscale.json`` is the longest) must fit in
    :data:`SEGMENT_BYTES` and each whole key, after ``store_prefix`` (the run store's own key prefix,
    ``s3://bucket/PREFIX``), in :data:`KEY_BYTES`.

    Raises:
        InvalidKeyError: some key would be too long; the message says which limit.
    """
    keys = RunKeys(LONGEST_RUN_ID)
    for key in (*keys.outputs(name), keys.input(name)):
        longest = max(key.split("/"), key=lambda segment: len(segment.encode()))
        if len(longest.encode()) > SEGMENT_BYTES:
            raise InvalidKeyError(
                f"input name {_abbreviated(name)!r} is too long: its object {longest[len(stem(name)):]!r} needs a "
                f"{len(longest.encode())}-byte file name, local filesystems allow {SEGMENT_BYTES} bytes (shorten it "
                f"to {SEGMENT_BYTES - len(longest.encode()) + len(name.encode())} bytes or less)")
        full = join_key(store_prefix, key) if store_prefix else key
        if len(full.encode()) > KEY_BYTES:
            raise InvalidKeyError(f"input name {_abbreviated(name)!r} is too long: its object keys need "
                                  f"{len(full.encode())} bytes, S3 allows {KEY_BYTES}")
    return name


def display_name(name: str) -> str:
    """``name`` as text every output can hold: bytes that are not UTF-8 (the surrogate escapes a
    local listing makes of them) shown as ``\\xNN``."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no filesystem listing makes
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _abbreviated(name: str, keep: int = 40) -> str:
    return name if len(name) <= keep else name[:keep] + "..."


def stem(name: str) -> str:
    return PurePosixPath(name).stem


class RunKeys:
    """Object keys of one run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = check_run_id(run_id)
        self.root = f"runs/{run_id}"

    def _image(self, stage: str, name: str, ext: str) -> str:
        return join_key(self.root, stage, stem(check_name(name)) + ext)

    def denoised(self, name: str) -> str:
        return self._image("denoised", name, ".png")

    def sr(self, name: str) -> str:
        return self._image("sr", name, ".png")

    def row(self, name: str) -> str:
        return self._image("rows", name, ".csv")

    def failed(self, name: str) -> str:
        return self._image("failed", name, ".json")

    def meta(self, name: str, stage: str) -> str:
        return self._image("meta", name, f".{stage}.json")

    def attempts(self, name: str, stage: str) -> str:
        return self._image("attempts", name, f".{stage}.json")

    def input(self, name: str) -> str:
        """Where a local input is uploaded when the run store is an object store."""
        return join_key(self.root, "input", check_name(name))

    def outputs(self, name: str) -> tuple[str, ...]:
        """Every object the stages write for ``name``, its markers (row, failure) first: what is
        forgotten when the input changes."""
        return (self.row(name), self.failed(name), self.sr(name), self.denoised(name),
                *(self.meta(name, stage) for stage in META_STAGES),
                *(self.attempts(name, stage) for stage in META_STAGES))

    def prefix(self, stage: str) -> str:
        return join_key(self.root, stage)

    @property
    def manifest(self) -> str:
        return join_key(self.root, "manifest.json")

    @property
    def started(self) -> str:
        return join_key(self.root, "started.json")

    @property
    def submission(self) -> str:
        return join_key(self.root, "submission.csv")

    @property
    def failures(self) -> str:
        return join_key(self.root, "failures.json")

    @property
    def summary(self) -> str:
        return join_key(self.root, "summary.json")

    @property
    def report(self) -> str:
        return join_key(self.root, "report.html")


class ImageState(StrEnum):
    PENDING = "pending"
    DENOISED = "denoised"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class RunProgress:
    """Stems per stage, read with one listing per stage (cheap on S3, even for big runs)."""

    denoised: frozenset[str]
    done: frozenset[str]
    failed: frozenset[str]

    @classmethod
    def read(cls, storage: Storage, run_id: str) -> RunProgress:
        keys = RunKeys(run_id)

        def stems(stage: str, ext: str) -> frozenset[str]:
            return frozenset(
                PurePosixPath(k).name.removesuffix(ext) for k in storage.list(keys.prefix(stage)) if k.endswith(ext)
            )

        return cls(denoised=stems("denoised", ".png"), done=stems("rows", ".csv"), failed=stems("failed", ".json"))

    def state(self, name: str) -> ImageState:
        s = stem(name)
        if s in self.done:
            return ImageState.DONE
        if s in self.failed:
            return ImageState.FAILED
        if s in self.denoised:
            return ImageState.DENOISED
        return ImageState.PENDING

    def counts(self, names: Iterable[str]) -> dict[ImageState, int]:
        counts = dict.fromkeys(ImageState, 0)
        for name in names:
            counts[self.state(name)] += 1
        return counts
