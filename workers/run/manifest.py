"""A run's manifest: its source, its ordered inputs, and the pipeline every worker applies to them.

Where the run's objects live is :mod:`workers.run.keys`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from workers.errors import ConfigError, ObjectNotFoundError, RunNotFoundError
from workers.io.storage import Storage
from workers.ops.denoise import DenoiseSpec
from workers.ops.upscalers import ChannelOrder, UpscalerName, upscaler_kind
from workers.run.keys import RunKeys

MANIFEST_VERSION = 1
DenoisePlacement = Literal["cpu", "gpu"]
GPU_DENOISERS = frozenset({"nlm", "none"})


@dataclass(frozen=True)
class PipelineSpec:
    """Per-run processing choices, recorded in the manifest so every worker applies the same.

    Built from a preset (:mod:`workers.run.presets`); the fields say exactly what each stage does.
    """

    preset: str = "standard"
    denoise: DenoiseSpec = field(default_factory=DenoiseSpec)
    channel_order: ChannelOrder = "rgb"  # "bgr" reproduces the seed's feed order
    resize_multiple: int = 0  # 8 reproduces the seed's final Lanczos resize; 0 = none
    upscaler: UpscalerName = "model"  # a name in workers.ops.upscalers.UPSCALERS
    tone: str = ""  # a tone-curve artifact (JSON text) applied before denoising; empty = off
    scale_nlm_by_gain: bool = False  # raise NL-means strength where the tone curve amplifies noise
    # Where denoising runs: "cpu" (OpenCV in the CPU task) or "gpu" (the same NL-means in PyTorch,
    # fused into the GPU task; bit-identical output). Placement, not content: not part of the run id.
    denoise_on: DenoisePlacement = "cpu"
    # The run's own model: its key in the run store and its sha256 ("learned" always has one; "model"
    # when the user named a checkpoint, else workers run the Hub's). Workers fetch it by hash and
    # refuse a copy that does not match.
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    tta: bool = False  # x8 flip/rotation self-ensemble in the upscaler, averaged before rounding

    def __post_init__(self) -> None:
        if self.channel_order not in get_args(ChannelOrder):
            raise ConfigError(f"channel order must be rgb or bgr, got {self.channel_order!r}")
        if self.resize_multiple < 0:
            raise ConfigError("resize multiple must be >= 0")
        upscaler_kind(self.upscaler)
        if self.denoise_on not in get_args(DenoisePlacement):
            raise ConfigError(f"denoise_on must be one of {sorted(get_args(DenoisePlacement))}, got {self.denoise_on!r}")
        if self.denoise_on == "gpu" and self.denoise.method not in GPU_DENOISERS:
            raise ConfigError(f"denoiser {self.denoise.method!r} cannot run on the GPU; choose {sorted(GPU_DENOISERS)}")
        if self.scale_nlm_by_gain and not self.tone:
            raise ConfigError("scaling NL-means by the tone curve's gain needs a tone curve")
        if bool(self.checkpoint) != bool(self.checkpoint_sha256):
            raise ConfigError(f"checkpoint {self.checkpoint!r}: a run's own checkpoint needs both its key and its sha256")
        kind = upscaler_kind(self.upscaler).checkpoint
        if (kind == "run" and not self.checkpoint) or (kind == "none" and self.checkpoint):
            raise ConfigError(f"upscaler {self.upscaler!r} and checkpoint {self.checkpoint!r}: 'learned' needs the "
                              "run's own checkpoint, an upscaler without a model takes none")

    @property
    def has_cpu_work(self) -> bool:
        """Whether the CPU stage changes the pixels (a denoiser or a tone curve): without either it
        would only decode the input and store it again as PNG."""
        return self.denoise.method != "none" or bool(self.tone)

    @property
    def first_stage(self) -> Literal["denoise", "upscale"]:
        """Where a new image goes first: the GPU stage when denoising is fused into it, or when the CPU
        stage has nothing to do (it reads the input itself then: one task, one encode and decode and
        one stored object fewer per image, the same pixels). The plan, the sweep and ``status`` use it."""
        return "upscale" if self.denoise_on == "gpu" or not self.has_cpu_work else "denoise"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def content(self) -> dict[str, Any]:
        """What the outputs depend on: everything but where the work runs. Fields added after the
        first manifests count only when set, so older runs keep their ids."""
        data = self.to_dict()
        del data["denoise_on"]
        for name, default in _LATER_FIELDS.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSpec:
        data = dict(data)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"run pipeline has unknown fields {sorted(unknown)}: written by a newer version?")
        data["denoise"] = DenoiseSpec(**data.get("denoise", {}))
        return cls(**data)


_LATER_FIELDS: dict[str, Any] = {"checkpoint": "", "checkpoint_sha256": "", "tta": False}


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
    # What the stored outputs of each input name were made from (Storage.fingerprint at listing), for
    # the names listed now and for earlier ones whose outputs remain: an input whose bytes changed is
    # redone, not mistaken for finished. Empty in manifests written before it existed.
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    # The submission IDs sample_submission.csv lists, in its order, when one was given (None in
    # manifests written before they were checked): the aggregator reports an ID no input has and an
    # input whose ID it does not list.
    expected_ids: tuple[str, ...] | None = None

    @property
    def total(self) -> int:
        """Every input the source listed, processed or rejected."""
        return len(self.names) + len(self.rejected)

    @property
    def listing_digest(self) -> str:
        """Identifies what a run's outcome must cover: the listed inputs (names, bytes, rejections) and
        the expected width. The aggregator records it in ``summary.json``; a summary with another
        digest belongs to an earlier listing and says nothing about this one."""
        listing: list[object] = [list(self.names), [self.fingerprints.get(n, "") for n in self.names],
                                 [list(r) for r in self.rejected], self.expected_columns]
        if self.expected_ids is not None:  # only when set: digests of older manifests stay as they were
            listing.append(list(self.expected_ids))
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pipeline"] = self.pipeline.to_dict()
        data["names"] = list(self.names)
        data["rejected"] = [list(r) for r in self.rejected]
        data["fingerprints"] = dict(self.fingerprints)
        if self.expected_ids is not None:
            data["expected_ids"] = list(self.expected_ids)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunManifest:
        """A stored manifest (fields added since version 1 are optional: older manifests read as before).

        Raises:
            ConfigError: another version, or fields this version does not know (a newer writer's).
        """
        data = dict(data)
        if data.get("version") != MANIFEST_VERSION:
            raise ConfigError(f"run manifest version {data.get('version')} is not {MANIFEST_VERSION}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"run manifest has unknown fields {sorted(unknown)}: written by a newer version?")
        data["pipeline"] = PipelineSpec.from_dict(data["pipeline"])
        data["names"] = tuple(data["names"])
        data["rejected"] = tuple((str(n), str(r)) for n, r in data.get("rejected", ()))
        if data.get("expected_ids") is not None:
            data["expected_ids"] = tuple(data["expected_ids"])
        return cls(**data)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RunManifest:
        return cls.from_dict(json.loads(raw))


def make_run_id(label: str, source: str, pipeline: PipelineSpec, model: str) -> str:
    """Deterministic id: the same source, pipeline and model give the same run, so re-running resumes."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-._")[:40] or "run"
    fingerprint = json.dumps([source, pipeline.content(), model], sort_keys=True)
    return f"{slug}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:10]}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def load_manifest(storage: Storage, run_id: str) -> RunManifest:
    try:
        return RunManifest.from_json(storage.get(RunKeys(run_id).manifest))
    except ObjectNotFoundError:
        raise RunNotFoundError(f"no run {run_id!r} in {storage.url('runs')} (`producer runs` lists them)") from None


def save_manifest(storage: Storage, manifest: RunManifest) -> None:
    storage.put(RunKeys(manifest.run_id).manifest, manifest.to_json())


