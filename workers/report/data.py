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
    """One image against its ground truth, and bicubic x4 of its input against the same (the baseline);
    ``psnr`` is None (with a ``note``) when it cannot be scored, ``baseline_psnr`` when the baseline
    cannot (its input is unreadable, or bicubic x4 of it is not the ground truth's size)."""

    name: str
    psnr: float | None
    ssim: float | None
    note: str = ""
    baseline_psnr: float | None = None
    baseline_ssim: float | None = None

    @property
    def gain(self) -> float | None:
        """PSNR over the bicubic baseline, in dB (0 when they are equal, both infinite included)."""
        if self.psnr is None or self.baseline_psnr is None:
            return None
        return self.psnr - self.baseline_psnr if self.psnr != self.baseline_psnr else 0.0


@dataclass(frozen=True)
class ScoreMeans:
    """Means over the scored images; the baseline's and the gain over the images it scored too."""

    count: int
    psnr: float  # inf if one image is identical to its ground truth
    ssim: float
    baseline_count: int
    baseline_psnr: float | None
    baseline_ssim: float | None
    gain: float | None  # mean of the per-image gains


@dataclass(frozen=True)
class ImageReport:
    name: str
    state: str  # an ImageState value
    score: Score | None
    seconds: Mapping[str, float]  # stage -> seconds, from the meta files
    input_size: tuple[int, int] | None  # (width, height)
    output_size: tuple[int, int] | None
    panels: Mapping[str, EmbeddedImage]  # "input", "denoised", "sr", "truth", "crop_input", "crop_sr", "crop_truth"
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
class RunClock:
    """The run's wall time and throughput, counted from its latest enqueue (``started.json``).

    Images finished before that enqueue (by an earlier one) are counted apart, not in the time. A
    run that recorded no enqueue (made before runs did) is timed from its first image's start.
    """

    started_at: str  # the latest enqueue's time; "" when the run recorded none
    remaining: int | None  # images that enqueue left to do; None when not recorded
    finished: int  # images finished (done or failed) since the start
    finished_before: int  # images finished before it
    wall_seconds: float | None  # the start to the last image finished since; None when none has
    first_seconds: float | None  # the start to the first image finished since (start-up included)
    bin_s: int
    throughput: tuple[tuple[float, int], ...]  # (interval start in s since the start, images finished in it)

    @property
    def images_per_s(self) -> float | None:
        if not self.finished or not self.wall_seconds:
            return None
        return self.finished / self.wall_seconds


@dataclass(frozen=True)
class TrainingSummary:
    """How the run's own model was trained (its provenance), when the run used one."""

    start: str  # the checkpoint training started from, as the provenance records it
    start_sha256: str
    architecture: str
    steps: int
    best_step: int
    best_psnr: float | None  # on the held-back training pairs
    seconds: float
    pairs: int
    photos: int  # clean photos it learned from (degraded on the fly)
    curve: tuple[tuple[int, float], ...]  # (step, held-back PSNR)


@dataclass(frozen=True)
class ReportData:
    run_id: str
    source: str
    created_at: str
    model: str  # what the producer asked for ("file:...", "hf:repo/file@rev", "run:<key>" or the upscaler)
    model_name: str  # the shipped model's name when the run's own checkpoint is one, else ""
    expected_columns: int | None
    seed_compat: bool
    pipeline: Mapping[str, Any]  # the manifest's pipeline dict, rendered generically
    models: tuple[tuple[str, str, str, str], ...]  # distinct (source, sha256, device, precision) the upscaler recorded
    code_versions: tuple[str, ...]
    counts: Mapping[str, int]  # done, failed, pending, denoised (of pending), rejected, total
    summary: Mapping[str, Any] | None  # summary.json, when the run was aggregated
    clock: RunClock
    timings: tuple[StageTiming, ...]
    scores: tuple[Score, ...]  # every scored image, worst PSNR first
    means: ScoreMeans | None  # of the scores, when there are any
    with_truth: bool  # ground truth was given: the images show it, scored or not
    images: tuple[ImageReport, ...]  # the shown ones, in display order
    omitted: int  # images not shown (max_images)
    failures: tuple[Failure, ...]
    training: TrainingSummary | None = None
    generated_at: str = field(default_factory=now_iso)
