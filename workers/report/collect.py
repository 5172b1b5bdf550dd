"""Read one run from storage into a :class:`~workers.report.data.ReportData`: counts, settings,
the run's clock, timings, per-image panels (already encoded) and scores (already computed)."""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from workers.errors import ConfigError, ObjectNotFoundError, PermanentImageError
from workers.io.imageio import DecodeLimits, decode_image
from workers.io.models import load_registry, models_folder
from workers.io.storage import Storage, fetch_in_order
from workers.ops.upscalers import upscaler_kind
from workers.report.clock import run_clock
from workers.report.data import Failure, ImageReport, ReportData, Score, StageTiming, TrainingSummary
from workers.report.scoring import get_png, load_input, mean_scores, score_image
from workers.report.thumbnails import crops, embed
from workers.run.aggregate import MISSING_ID, missing_ids
from workers.run.attempts import WORKER_DEATHS
from workers.run.keys import RunKeys, RunProgress, stem
from workers.run.manifest import PipelineSpec, RunManifest, load_manifest
from workers.run.resolve import provenance_key
from workers.run.started import read_start


def collect_report_data(
    storage: Storage,
    source: Storage,
    run_id: str,
    truth: Mapping[str, Path] | None = None,
    max_images: int = 60,
    limits: DecodeLimits | None = None,
    threads: int = 4,
) -> ReportData:
    """Read run ``run_id`` from ``storage`` (inputs from ``source``) into a :class:`ReportData`.

    ``truth`` maps input names to ground-truth image paths; with it, images are scored (and bicubic
    x4 of their inputs, the baseline), shown worst PSNR first beside their ground truth, else in
    input order. At most ``max_images`` images are shown. ``limits``
    bound the decoding of inputs (default: the settings' defaults); the run's outputs and the ground
    truth get them scaled by the upscaler's factor. Per-image objects are read, scored and drawn
    ``threads`` at a time, in order.

    Raises:
        RunNotFoundError: no manifest for ``run_id``.
        InvalidKeyError: ``run_id`` is not a valid run id.
        TransientError: a storage could not be reached.
        OSError: a ground-truth file could not be read.
    """
    limits = limits or DecodeLimits.from_settings()
    manifest = load_manifest(storage, run_id)
    keys = RunKeys(run_id)
    progress = RunProgress.read(storage, run_id)
    output_limits = limits.scaled(upscaler_kind(manifest.pipeline.upscaler).scale)
    markers = _read_failure_markers(storage, keys, manifest, progress, threads)
    truths = truth or {}
    scored = [n for n in manifest.names if n in truths and stem(n) in progress.done]
    scoring = fetch_in_order(lambda name: score_image(storage, keys, name, truths[name], output_limits, source, limits),
                             scored, threads)
    scores = dict(zip(scored, scoring, strict=True))
    order = _display_order(manifest.names, scores)
    shown = order[: max(max_images, 0)]
    metas = _read_metas(storage, keys, {stem(name) for name in shown}, threads)
    failed_at = array("d", (t for t in (_timestamp(f.at) for f in markers.values()) if t is not None))
    first_start = min((t for t in (metas.first_start, min(failed_at, default=None)) if t is not None), default=None)
    images = _ImageReader(storage, source, keys, manifest.pipeline, progress, limits, output_limits)
    ranked = sorted((s for s in scores.values() if s.psnr is not None), key=lambda s: s.psnr or 0.0)
    return ReportData(
        run_id=manifest.run_id,
        source=manifest.source,
        created_at=manifest.created_at,
        model=manifest.model,
        model_name=_shipped_name(manifest.pipeline.checkpoint_sha256),
        expected_columns=manifest.expected_columns,
        seed_compat=manifest.pipeline.channel_order == "bgr" and manifest.pipeline.resize_multiple == 8,
        pipeline=manifest.pipeline.to_dict(),
        models=tuple(sorted(metas.models)),
        code_versions=tuple(sorted(metas.code_versions)),
        counts=_counts(manifest, progress),
        summary=_read_json(storage, keys.summary),
        clock=run_clock(read_start(storage, run_id), metas.finishes + failed_at, first_start),
        timings=_stage_timings(metas),
        scores=tuple(ranked),
        means=mean_scores(ranked),
        with_truth=truth is not None,
        images=tuple(fetch_in_order(lambda name: images.report(name, metas.shown, scores.get(name),
                                                               truth.get(name) if truth else None, markers.get(name)),
                                    shown, threads)),
        omitted=len(order) - len(shown),
        failures=_failures(storage, keys, manifest, markers),
        training=_training(storage, manifest),
    )


def _training(storage: Storage, manifest: RunManifest) -> TrainingSummary | None:
    """The provenance of the run's own model, published beside it in the run store."""
    if not manifest.pipeline.checkpoint_sha256:
        return None
    provenance = _read_json(storage, provenance_key(manifest.pipeline.checkpoint_sha256))
    if not isinstance(provenance, dict):
        return None
    curve = tuple((int(p["step"]), float(p["holdout_psnr"])) for p in provenance.get("curve", [])
                  if p.get("holdout_psnr") is not None)
    start = provenance.get("start") or {}
    photos = provenance.get("photos") or {}
    return TrainingSummary(str(start.get("source", "?")), str(start.get("sha256") or ""),
                           str(start.get("architecture", "?")), int(provenance.get("steps", 0)),
                           int(provenance.get("best_step", 0)), provenance.get("holdout_psnr"),
                           float(provenance.get("seconds", 0.0)), int((provenance.get("pairs") or {}).get("train", 0)),
                           int(photos.get("train", 0)), curve)


def _shipped_name(sha256: str) -> str:
    """The name of the repository's shipped model with this sha256, "" for any other."""
    if not sha256:
        return ""
    try:
        registry = load_registry(models_folder())
    except ConfigError:
        return ""
    return next((m.name for m in registry.models.values() if m.sha256 == sha256), "")


def _read_json(storage: Storage, key: str) -> Any:
    """The parsed object, or None when it does not exist."""
    try:
        return json.loads(storage.get(key))
    except ObjectNotFoundError:
        return None


Metas = Mapping[str, Mapping[str, Mapping[str, Any]]]  # stem -> stage -> the meta file's fields


@dataclass
class MetaSummary:
    """What the report takes from the meta files, gathered one file at a time so memory does not grow
    with them (a run of 100k images has 200k): each stage's durations and the finish times as compact
    arrays of doubles, the earliest start, the models and code versions seen, and the whole metas of
    the shown images only."""

    shown_stems: frozenset[str]
    seconds: dict[str, array[float]] = field(default_factory=dict)  # stage -> durations
    finishes: array[float] = field(default_factory=lambda: array("d"))  # epoch s: upscaled
    first_start: float | None = None  # epoch s: the earliest stage start (for runs without started.json)
    models: set[tuple[str, str, str, str]] = field(default_factory=set)  # (source, sha256, device, precision + why)
    code_versions: set[str] = field(default_factory=set)
    shown: dict[str, dict[str, Mapping[str, Any]]] = field(default_factory=dict)

    def add(self, image_stem: str, stage: str, meta: Mapping[str, Any]) -> None:
        seconds = meta.get("seconds")
        if isinstance(seconds, int | float):
            self.seconds.setdefault(stage, array("d")).append(float(seconds))
        if "code_version" in meta:
            self.code_versions.add(str(meta["code_version"]))
        if stage == "upscale":
            precision = " ".join(str(meta[k]) for k in ("precision", "precision_reason") if meta.get(k))
            self.models.add((str(meta.get("model", "")), str(meta.get("model_sha256", "")), str(meta.get("device", "")),
                             precision.replace(" ", ": ", 1) if meta.get("precision_reason") else precision))
        self._add_times(stage, meta)
        if image_stem in self.shown_stems:
            self.shown.setdefault(image_stem, {})[stage] = meta

    def _add_times(self, stage: str, meta: Mapping[str, Any]) -> None:
        """The stages record ``at`` to the millisecond, when they ended; an upscale's ``seconds`` is
        the image's share of its batch of ``batch``."""
        at = _timestamp(meta.get("at"))
        seconds = meta.get("seconds")
        if at is None or not isinstance(seconds, int | float):
            return
        batch = meta.get("batch") if stage == "upscale" else 1
        started = at - float(seconds) * (batch if isinstance(batch, int) and batch > 0 else 1)
        self.first_start = started if self.first_start is None else min(self.first_start, started)
        if stage == "upscale":
            self.finishes.append(at)


def _read_metas(storage: Storage, keys: RunKeys, shown: Iterable[str], threads: int) -> MetaSummary:
    """Every ``meta/<stem>.<stage>.json`` of the run (one listing, one read each), summarised as read;
    the stems in ``shown`` keep their metas whole."""
    summary = MetaSummary(frozenset(shown))
    found = (item for item in map(_meta_key, storage.list(keys.prefix("meta"))) if item is not None)
    fetched = fetch_in_order(lambda item: (item, storage.get(item[0])), found, threads)
    for (_, image_stem, stage), data in fetched:
        summary.add(image_stem, stage, json.loads(data))
    return summary


def _meta_key(key: str) -> tuple[str, str, str] | None:
    """(key, stem, stage) of a meta file's key, None for anything else."""
    image_stem, _, stage = PurePosixPath(key).name.removesuffix(".json").rpartition(".")
    return (key, image_stem, stage) if image_stem and key.endswith(".json") else None


def _read_failure_markers(
    storage: Storage, keys: RunKeys, manifest: RunManifest, progress: RunProgress, threads: int
) -> dict[str, Failure]:
    """``failed/<stem>.json`` of every failed input, by input name."""
    failed = [name for name in manifest.names if stem(name) in progress.failed]
    records = fetch_in_order(lambda name: _read_json(storage, keys.failed(name)) or {}, failed, threads)
    return {
        name: Failure(name, str(record.get("stage", "?")), str(record.get("reason", "")), str(record.get("at", "")),
                      str(record.get("kind", "")))
        for name, record in zip(failed, records, strict=True)
    }


def _failures(storage: Storage, keys: RunKeys, manifest: RunManifest, markers: Mapping[str, Failure]) -> tuple[Failure, ...]:
    """Per-image failures (live), listing rejections, sample IDs no input has, and what the aggregator
    left out of the submission (width mismatches, IDs the sample does not list)."""
    aggregated = _read_json(storage, keys.failures) or []
    mismatches = [Failure(str(f.get("name", "")), "aggregate", str(f.get("reason", "")))
                  for f in aggregated if f.get("stage") == "aggregate"]
    rejected = [Failure(name, "listing", reason) for name, reason in manifest.rejected]
    missing = [Failure(image_id, "listing", MISSING_ID) for image_id in missing_ids(manifest)]
    return (*markers.values(), *mismatches, *rejected, *missing)


def _counts(manifest: RunManifest, progress: RunProgress) -> dict[str, int]:
    by_state = {state.value: n for state, n in progress.counts(manifest.names).items()}
    return {
        "done": by_state["done"],
        "failed": by_state["failed"],
        "pending": by_state["pending"] + by_state["denoised"],
        "denoised": by_state["denoised"],
        "rejected": len(manifest.rejected),
        "total": manifest.total,
    }


def _display_order(names: Sequence[str], scores: Mapping[str, Score]) -> list[str]:
    """Scored images worst PSNR first, then the rest in input order."""
    scored = sorted((n for n in names if scores.get(n) and scores[n].psnr is not None),
                    key=lambda n: scores[n].psnr or 0.0)
    chosen = set(scored)
    return scored + [n for n in names if n not in chosen]


def _stage_timings(metas: MetaSummary) -> tuple[StageTiming, ...]:
    return tuple(
        StageTiming(stage, len(v), float(np.percentile(v, 50)), float(np.percentile(v, 95)), math.fsum(v))
        for stage, v in sorted(metas.seconds.items(), key=lambda item: _stage_rank(item[0]))
    )


def _stage_rank(stage: str) -> tuple[int, str]:
    known = ("denoise", "upscale")
    return (known.index(stage) if stage in known else len(known), stage)


def _timestamp(value: object) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class _ImageReader:
    """Reads what one image shows: its input, the stages' outputs the pipeline makes, its ground truth."""

    storage: Storage
    source: Storage
    keys: RunKeys
    pipeline: PipelineSpec
    progress: RunProgress
    limits: DecodeLimits  # inputs
    output_limits: DecodeLimits  # the 4x outputs and the ground truth

    def report(self, name: str, metas: Metas, score: Score | None, truth: Path | None,
               failure: Failure | None = None) -> ImageReport:
        notes = []
        if failure is not None and failure.kind == WORKER_DEATHS:
            # What killed the workers would kill the one writing this report (and its redelivery, and
            # the next): an input that crash-loops a pool is never decoded for a picture.
            original, why = None, "not decoded: its workers died processing it"
        else:
            original, why = load_input(self.source, name, self.limits)
        if why:
            notes.append(f"input: {why}")
        output = get_png(self.storage, self.keys.sr(name), self.output_limits)
        panels = {"input": original, "sr": output}
        if self.pipeline.has_cpu_work:  # else the CPU stage stores nothing: there is no such panel
            panels["denoised"] = get_png(self.storage, self.keys.denoised(name), self.limits)
        if truth is not None:
            panels["truth"], why = self._truth(truth)
            if why:
                notes.append(f"ground truth: {why}")
        if output is not None:
            panels |= crops(original, output, panels.get("truth"))
        seconds = {stage: float(m["seconds"]) for stage, m in metas.get(stem(name), {}).items()
                   if isinstance(m.get("seconds"), int | float)}
        return ImageReport(
            name=name,
            state=self.progress.state(name).value,
            score=score,
            seconds=seconds,
            input_size=_wh(original),
            output_size=_wh(output),
            panels={k: embed(v) for k, v in panels.items() if v is not None},
            notes=tuple(notes),
        )

    def _truth(self, path: Path) -> tuple[np.ndarray | None, str]:
        try:
            return decode_image(path.read_bytes(), path.name, self.output_limits), ""
        except PermanentImageError as exc:
            return None, exc.reason
        except OSError as exc:
            return None, f"unreadable ({exc.strerror or type(exc).__name__})"


def _wh(rgb: np.ndarray | None) -> tuple[int, int] | None:
    return None if rgb is None else (rgb.shape[1], rgb.shape[0])
