"""What a run report shows, as plain values: collected by :mod:`~workers.report.collect`, drawn by
:mod:`~workers.report.render`."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.run.manifest import now_iso


@dataclass(frozen=True)
class EmbeddedImage:
    """An encoded thumbnail, ready to embed as a ``data:`` URI."""

    mime: str
    data: bytes
    width: int
    height: int

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True)
class Score:
    """One image against its ground truth; ``psnr`` is None (with a ``note``) when it cannot be scored."""

    name: str
    psnr: float | None
    ssim: float | None
    note: str = ""


@dataclass(frozen=True)
class ImageReport:
    name: str
    state: str  # an ImageState value
    score: Score | None
    seconds: Mapping[str, float]  # stage -> seconds, from the meta files
    input_size: tuple[int, int] | None  # (width, height)
    output_size: tuple[int, int] | None
    panels: Mapping[str, EmbeddedImage]  # "input", "denoised", "sr", "crop_input", "crop_sr"
    notes: tuple[str, ...] = ()  # why a panel is missing


@dataclass(frozen=True)
class Failure:
    name: str
    stage: str
    reason: str
    at: str = ""
    kind: str = ""  # "worker-deaths": its workers kept dying on it (the report does not decode its input)


@dataclass(frozen=True)
class StageTiming:
    stage: str
    count: int
    p50: float
    p95: float
    total: float


@dataclass(frozen=True)
class TrainingSummary:
    """How the run's own model was trained (its provenance), when the run used one."""

    start: str  # the checkpoint training started from
    architecture: str
    steps: int
    best_step: int
    best_psnr: float | None  # on the held-back training pairs
    seconds: float
    pairs: int
    curve: tuple[tuple[int, float], ...]  # (step, held-back PSNR)


@dataclass(frozen=True)
class ReportData:
    run_id: str
    source: str
    created_at: str
    model: str  # what the producer asked for ("file:..." or "hf:repo/file@rev")
    expected_columns: int | None
    seed_compat: bool
    pipeline: Mapping[str, Any]  # the manifest's pipeline dict, rendered generically
    models: tuple[tuple[str, str, str, str], ...]  # distinct (source, sha256, device, precision) the upscaler recorded
    code_versions: tuple[str, ...]
    counts: Mapping[str, int]  # done, failed, pending, denoised (of pending), rejected, total
    summary: Mapping[str, Any] | None  # summary.json, when the run was aggregated
    wall_seconds: float | None  # first start to last finish
    timings: tuple[StageTiming, ...]
    throughput_bin_s: int
    throughput: tuple[tuple[float, int], ...]  # (interval start in s since first start, images finished)
    scores: tuple[Score, ...]  # every scored image, worst PSNR first
    images: tuple[ImageReport, ...]  # the shown ones, in display order
    omitted: int  # images not shown (max_images)
    failures: tuple[Failure, ...]
    training: TrainingSummary | None = None
    generated_at: str = field(default_factory=now_iso)
