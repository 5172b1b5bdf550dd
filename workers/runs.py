"""A run: its manifest, its pipeline choices, and where each of its objects lives.

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

import hashlib
import importlib.metadata
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from workers.denoise import DenoiseSpec
from workers.errors import ConfigError, InvalidKeyError, ObjectNotFoundError, RunNotFoundError
from workers.storage import Storage, check_key, join_key

MANIFEST_VERSION = 1
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


@dataclass(frozen=True)
class PipelineSpec:
    """Per-run processing choices, recorded in the manifest so every worker applies the same.

    Built from a preset (:mod:`workers.presets`); the fields say exactly what each stage does.
    """

    preset: str = "standard"
    denoise: DenoiseSpec = field(default_factory=DenoiseSpec)
    channel_order: str = "rgb"  # "bgr" reproduces the seed's feed order
    resize_multiple: int = 0  # 8 reproduces the seed's final Lanczos resize; 0 = none
    upscaler: str = "model"  # "model" (the worker's checkpoint) or "bicubic"
    tone: str = ""  # a tone-curve artifact (JSON text) applied before denoising; empty = off
    scale_nlm_by_gain: bool = False  # raise NL-means strength where the tone curve amplifies noise
    # Where denoising runs: "cpu" (OpenCV in the CPU task) or "gpu" (the same NL-means in PyTorch,
    # fused into the GPU task; bit-identical output). Placement, not content: not part of the run id.
    denoise_on: str = "cpu"

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise ConfigError(f"channel order must be rgb or bgr, got {self.channel_order!r}")
        if self.resize_multiple < 0:
            raise ConfigError("resize multiple must be >= 0")
        if self.upscaler not in UPSCALERS:
            raise ConfigError(f"upscaler must be one of {sorted(UPSCALERS)}, got {self.upscaler!r}")
        if self.denoise_on not in PLACEMENTS:
            raise ConfigError(f"denoise_on must be one of {sorted(PLACEMENTS)}, got {self.denoise_on!r}")
        if self.denoise_on == "gpu" and self.denoise.method not in GPU_DENOISERS:
            raise ConfigError(f"denoiser {self.denoise.method!r} cannot run on the GPU; choose {sorted(GPU_DENOISERS)}")
        if self.scale_nlm_by_gain and not self.tone:
            raise ConfigError("scaling NL-means by the tone curve's gain needs a tone curve")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def content(self) -> dict[str, Any]:
        """What the outputs depend on: everything but where the work runs."""
        data = self.to_dict()
        del data["denoise_on"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSpec:
        data = dict(data)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"run pipeline has unknown fields {sorted(unknown)}: written by a newer version?")
        data["denoise"] = DenoiseSpec(**data.get("denoise", {}))
        return cls(**data)


UPSCALERS = frozenset({"model", "bicubic"})
PLACEMENTS = frozenset({"cpu", "gpu"})
GPU_DENOISERS = frozenset({"nlm", "none"})


@dataclass(frozen=True)
class RunManifest:
    run_id: str
    source: str  # URL of the input store: file:///dir or s3://bucket/prefix
    names: tuple[str, ...]  # input names in submission order
    pipeline: PipelineSpec
    model: str  # the weights the producer asked for ("file:..." or "hf:repo/file@rev")
    expected_columns: int | None = None  # from sample_submission.csv, when given
    rejected: tuple[tuple[str, str], ...] = ()  # (name, reason) refused while listing the source
    created_at: str = ""
    version: int = MANIFEST_VERSION

    @property
    def total(self) -> int:
        """Every input the source listed, processed or rejected."""
        return len(self.names) + len(self.rejected)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["pipeline"] = self.pipeline.to_dict()
        data["names"] = list(self.names)
        data["rejected"] = [list(r) for r in self.rejected]
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RunManifest:
        data = json.loads(raw)
        if data.get("version") != MANIFEST_VERSION:
            raise ConfigError(f"run manifest version {data.get('version')} is not {MANIFEST_VERSION}")
        data["pipeline"] = PipelineSpec.from_dict(data["pipeline"])
        data["names"] = tuple(data["names"])
        data["rejected"] = tuple(tuple(r) for r in data.get("rejected", ()))
        return cls(**data)


def make_run_id(label: str, source: str, pipeline: PipelineSpec, model: str) -> str:
    """Deterministic id: the same source, pipeline and model give the same run, so re-running resumes."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-._")[:40] or "run"
    fingerprint = json.dumps([source, pipeline.content(), model], sort_keys=True)
    return f"{slug}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:10]}"


def code_version() -> str:
    """The installed package version (recorded with every output, for reports)."""
    try:
        return importlib.metadata.version("lowlight-sr")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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


def load_manifest(storage: Storage, run_id: str) -> RunManifest:
    try:
        return RunManifest.from_json(storage.get(RunKeys(run_id).manifest))
    except ObjectNotFoundError:
        raise RunNotFoundError(f"no run {run_id!r} in {storage.url('runs')}") from None


def save_manifest(storage: Storage, manifest: RunManifest) -> None:
    storage.put(RunKeys(manifest.run_id).manifest, manifest.to_json())


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
