"""Where each of a run's objects lives, and how far each image has got.

Every output key is a pure function of (run id, input name, stage), so any stage can tell whether
its work is already done by looking for its output, and re-running a run resumes it.

Layout under ``runs/<run>/``::

    manifest.json              the run: source, ordered input names, pipeline, expected columns
    denoised/<stem>.png        CPU stage output
    sr/<stem>.png              GPU stage output (the 4x image)
    rows/<stem>.csv            the image's submission row; written last, it marks the image done
    failed/<stem>.json         why the image failed (it is then done too, as failed)
    meta/<stem>.<stage>.json   timing and sizes, for reports
    submission.csv, failures.json, summary.json, report.html   written by the aggregator
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


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise InvalidKeyError(f"invalid run id {run_id!r} (letters, digits, '.', '_', '-'; up to 128)")
    return run_id


def check_name(name: str) -> str:
    """An input name is one path segment: no directories, no traversal."""
    if "/" in name:
        raise InvalidKeyError(f"input name {name!r} must not contain '/'")
    return check_key(name)


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

    def prefix(self, stage: str) -> str:
        return join_key(self.root, stage)

    @property
    def manifest(self) -> str:
        return join_key(self.root, "manifest.json")

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
