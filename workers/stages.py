"""The pipeline's stages as plain functions over storage keys: no Celery, no threads.

Celery tasks (:mod:`workers.tasks`) and the in-process runner (:mod:`producer.embedded`) both call
exactly these, so the embedded default and the distributed system cannot drift apart.

Each stage is idempotent: it returns at once if its output exists (``skipped`` when the image is
already finished, ``denoised`` when only the next stage remains). A permanent per-image problem
is recorded under ``failed/`` and returned as a ``failed`` outcome; a transient problem raises
(single-image stages) or is returned as a ``retry`` outcome (batch stage), never recorded.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np

from workers.denoise import DenoiseSpec, denoise, denoise_on_device
from workers.errors import (
    ObjectNotFoundError,
    PermanentImageError,
    SubmissionMismatchError,
    TransientError,
)
from workers.imageio import DecodeLimits, decode_image, decode_png, encode_png
from workers.resample import bicubic_x4, resize_to_multiple
from workers.runs import PipelineSpec, RunKeys, RunManifest, RunProgress, code_version, load_manifest, now_iso, stem
from workers.settings import Settings
from workers.storage import Storage, StorageFactory, fetch_in_order
from workers.submission import SubmissionWriter, format_row, grey_subsample, row_width, submission_id
from workers.tone import ToneCurve, apply_tone, scaled_nlm_strength
from workers.weights import file_sha256, resolve_weights

if TYPE_CHECKING:  # workers.upscale imports torch: only the processes that run a model load it
    from workers.upscale import Upscaler

logger = logging.getLogger(__name__)

CODE_VERSION = code_version()
Status = Literal["denoised", "done", "failed", "skipped", "retry"]


@dataclass(frozen=True)
class Outcome:
    """What a stage did with one image."""

    name: str
    status: Status
    reason: str = ""
    seconds: float = 0.0
    size: tuple[int, int] | None = None  # (width, height) of the stage's input
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "reason": self.reason, "seconds": round(self.seconds, 4)}


class StageContext:
    """Everything a stage needs, built once per process and shared by its threads.

    The model is loaded on first use (or by :meth:`warm_up` at worker start) and kept.
    """

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.settings = settings
        self.storages = StorageFactory(settings)
        self.storage = storage or self.storages.open(settings.storage_url)
        self.limits = DecodeLimits.from_settings(settings)
        self.hostname = socket.gethostname()
        self._model_lock = threading.Lock()
        self.io_pool = ThreadPoolExecutor(max_workers=settings.io_threads, thread_name_prefix="store")
        self._upscaler: Upscaler | None = None
        self.model_source = ""
        self.model_sha256 = ""
        self._manifest = lru_cache(maxsize=64)(self._load_manifest)
        self._source = lru_cache(maxsize=64)(self.storages.open)
        self._tone = lru_cache(maxsize=16)(lambda text: ToneCurve.from_json(text.encode()))

    def upscaler(self) -> Upscaler:
        with self._model_lock:
            if self._upscaler is None:
                from workers.upscale import TilePolicy, load_upscaler

                ref = resolve_weights(self.settings)
                s = self.settings
                self._upscaler = load_upscaler(
                    ref.path, s.device, s.precision, TilePolicy(s.tile_max_pixels, s.tile_size, s.tile_overlap)
                )
                self.model_source = ref.source
                self.model_sha256 = file_sha256(ref.path)
            return self._upscaler

    def warm_up(self) -> None:
        self.upscaler()

    def manifest(self, run_id: str) -> RunManifest:
        # The pipeline and source of a run never change; only the name list can grow on re-enqueue,
        # and stages do not read it.
        return self._manifest(run_id)

    def _load_manifest(self, run_id: str) -> RunManifest:
        return load_manifest(self.storage, run_id)

    def source(self, manifest: RunManifest) -> Storage:
        return self._source(manifest.source)

    def tone_curve(self, pipeline: PipelineSpec) -> ToneCurve | None:
        return self._tone(pipeline.tone) if pipeline.tone else None


# -- recording -------------------------------------------------------------------------------------


def record_failure(ctx: StageContext, run_id: str, name: str, stage: str, reason: str) -> Outcome:
    """Write ``failed/<stem>.json``; the image then counts as finished (failed) for the run."""
    logger.warning("run %s: %s failed in %s: %s", run_id, name, stage, reason)
    record = {"name": name, "stage": stage, "reason": reason, "worker": ctx.hostname, "at": now_iso()}
    ctx.storage.put(RunKeys(run_id).failed(name), json.dumps(record).encode())
    return Outcome(name, "failed", reason)


def _record_meta(ctx: StageContext, run_id: str, name: str, stage: str, **values: object) -> None:
    meta = {"stage": stage, "worker": ctx.hostname, "at": now_iso(), "code_version": CODE_VERSION, **values}
    ctx.storage.put(RunKeys(run_id).meta(name, stage), json.dumps(meta).encode())


def is_finished(ctx: StageContext, run_id: str, name: str) -> bool:
    keys = RunKeys(run_id)
    return ctx.storage.exists(keys.row(name)) or ctx.storage.exists(keys.failed(name))


# -- stage 1: load, validate, denoise (CPU) -------------------------------------------------------------


def denoise_stage(ctx: StageContext, run_id: str, name: str) -> Outcome:
    """Decode the input, denoise it, store ``denoised/<stem>.png``.

    Raises:
        TransientError: storage unreachable; retry later.
    """
    keys = RunKeys(run_id)
    if is_finished(ctx, run_id, name):
        return Outcome(name, "skipped")
    if ctx.storage.exists(keys.denoised(name)):
        return Outcome(name, "denoised", reason="already denoised")
    manifest = ctx.manifest(run_id)
    started = time.perf_counter()
    try:
        rgb, size_bytes = read_input(ctx, manifest, name)
        clean = denoise(*prepare_denoise(rgb, manifest.pipeline, ctx.tone_curve(manifest.pipeline)))
    except PermanentImageError as exc:
        return record_failure(ctx, run_id, name, "denoise", exc.reason)
    ctx.storage.put(keys.denoised(name), encode_png(clean))
    seconds = time.perf_counter() - started
    height, width = rgb.shape[:2]
    _record_meta(ctx, run_id, name, "denoise", seconds=seconds, width=width, height=height, input_bytes=size_bytes)
    return Outcome(name, "denoised", seconds=seconds, size=(width, height))


def read_input(ctx: StageContext, manifest: RunManifest, name: str) -> tuple[np.ndarray, int]:
    """Fetch and decode one input under the configured limits; (RGB array, file size).

    Raises:
        PermanentImageError: missing, undecodable or too large.
        TransientError: the source could not be reached.
    """
    try:
        data = ctx.source(manifest).get(name)
    except ObjectNotFoundError:
        raise PermanentImageError(name, "input object is missing from the source") from None
    return decode_image(data, name, ctx.limits), len(data)


def prepare_denoise(rgb: np.ndarray, pipeline: PipelineSpec, curve: ToneCurve | None) -> tuple[np.ndarray, DenoiseSpec]:
    """Tone-correct ``rgb`` (if the run has a curve) and say how to denoise the result: the run's
    denoiser, its strength scaled by the curve's gain where the pipeline asks (brightening
    amplifies noise)."""
    spec = pipeline.denoise
    if curve is None:
        return rgb, spec
    if pipeline.scale_nlm_by_gain:
        h, h_color = scaled_nlm_strength(rgb, curve, spec.h, spec.h_color)
        spec = dataclasses.replace(spec, h=h, h_color=h_color)
    return apply_tone(rgb, curve), spec


# -- stage 2: upscale, write the 4x image and the submission row (GPU) --------------------------------------


@dataclass(frozen=True)
class _Loaded:
    """One image ready for the GPU stage."""

    name: str
    image: np.ndarray  # denoised (CPU placement), or tone-corrected and still noisy (GPU placement)
    denoise: DenoiseSpec | None  # what remains to run on the device; None once denoised


def upscale_stage(ctx: StageContext, run_id: str, names: Sequence[str]) -> list[Outcome]:
    """Upscale the images ``names`` of one run, same-size images in shared batches.

    With the CPU placement the inputs are the CPU stage's denoised images; with the GPU placement
    this stage also decodes the inputs and runs NL-means on the device first.

    Never raises for a single image: each distinct name gets one :class:`Outcome`, in first-seen
    order; transient problems come back as ``retry`` outcomes carrying the error, for the caller to
    reschedule.
    """
    outcomes: dict[str, Outcome] = {}
    manifest = ctx.manifest(run_id)
    loaded: dict[tuple[int, int], list[_Loaded]] = defaultdict(list)
    for name in dict.fromkeys(names):  # de-duplicate, keep order
        try:
            if is_finished(ctx, run_id, name):
                outcomes[name] = Outcome(name, "skipped")
                continue
            item = _load_for_upscale(ctx, manifest, name)
            loaded[item.image.shape[:2]].append(item)
        except PermanentImageError as exc:
            outcomes[name] = record_failure(ctx, run_id, name, "upscale", exc.reason)
        except TransientError as exc:
            outcomes[name] = Outcome(name, "retry", str(exc), error=exc)

    # PNG encoding and uploads run on I/O threads, overlapping the next batch's forward pass.
    stores: dict[str, Future[Outcome]] = {}
    side_writes: list[Future[None]] = []
    for (height, width), items in loaded.items():
        for batch in _chunks(items, ctx.settings.gpu_batch_size):
            started = time.perf_counter()
            try:
                images = _denoise_on_device(ctx, manifest, batch, started, side_writes)
                outputs = upscale_images(ctx, images, manifest.pipeline)
            except TransientError as exc:
                outcomes.update((item.name, Outcome(item.name, "retry", str(exc), error=exc)) for item in batch)
                continue
            per_image = (time.perf_counter() - started) / len(batch)
            for item, hr in zip(batch, outputs, strict=True):
                stores[item.name] = ctx.io_pool.submit(
                    _store_upscaled, ctx, manifest, item.name, hr, per_image, (width, height), len(batch)
                )
    outcomes.update((name, future.result()) for name, future in stores.items())
    for future in side_writes:  # intermediate images: for reports, never a reason to fail an image
        if future.exception() is not None:
            logger.warning("run %s: could not store a denoised image: %s", run_id, future.exception())
    return [outcomes[name] for name in dict.fromkeys(names)]


def _load_for_upscale(ctx: StageContext, manifest: RunManifest, name: str) -> _Loaded:
    """The CPU stage's denoised image when it exists; otherwise the input, to denoise on the device
    (the GPU placement, or a run whose placement changed while this worker held its manifest)."""
    if manifest.pipeline.denoise_on == "cpu":
        try:
            return _Loaded(name, decode_png(ctx.storage.get(RunKeys(manifest.run_id).denoised(name))), None)
        except ObjectNotFoundError:
            pass
    rgb, _ = read_input(ctx, manifest, name)
    return _Loaded(name, *prepare_denoise(rgb, manifest.pipeline, ctx.tone_curve(manifest.pipeline)))


def _denoise_on_device(ctx: StageContext, manifest: RunManifest, batch: list[_Loaded], started: float,
                       side_writes: list[Future[None]]) -> np.ndarray:
    """The batch's images, denoised on the upscaler's device where the GPU placement left that to do
    (images sharing a strength run together); the denoised images are stored as the CPU stage would."""
    images = np.stack([item.image for item in batch])
    pending = [i for i, item in enumerate(batch) if item.denoise is not None and item.denoise.method != "none"]
    if not pending:
        return images
    from workers.upscale import resolve_device

    device = resolve_device(ctx.settings.device)
    by_spec: dict[DenoiseSpec, list[int]] = defaultdict(list)
    for i in pending:
        by_spec[batch[i].denoise].append(i)
    for spec, indices in by_spec.items():
        images[indices] = denoise_on_device(images[indices], spec, device)
    seconds = (time.perf_counter() - started) / len(batch)
    keys = RunKeys(manifest.run_id)
    for i in pending:
        name, clean = batch[i].name, images[i]
        side_writes.append(ctx.io_pool.submit(_store_denoised, ctx, keys.denoised(name), clean))
        side_writes.append(ctx.io_pool.submit(
            _record_meta, ctx, manifest.run_id, name, "denoise", seconds=seconds, width=clean.shape[1],
            height=clean.shape[0], device=str(device)))
    return images


def _store_denoised(ctx: StageContext, key: str, clean: np.ndarray) -> None:
    ctx.storage.put(key, encode_png(clean))


def upscale_images(ctx: StageContext, images: np.ndarray, pipeline: PipelineSpec) -> np.ndarray:
    """The GPU stage's pixels: N same-size images to their 4x versions with the pipeline's upscaler."""
    if pipeline.upscaler == "bicubic":
        return np.stack([bicubic_x4(image) for image in images])
    return ctx.upscaler().upscale(images, pipeline.channel_order)


def _store_upscaled(
    ctx: StageContext, manifest: RunManifest, name: str, hr: np.ndarray, seconds: float, size: tuple[int, int], batch: int
) -> Outcome:
    keys = RunKeys(manifest.run_id)
    try:
        if manifest.pipeline.resize_multiple:
            hr = resize_to_multiple(hr, manifest.pipeline.resize_multiple)
        values = grey_subsample(hr)
        ctx.storage.put(keys.sr(name), encode_png(hr))
        expected = manifest.expected_columns
        if expected is not None and len(values) != expected:
            raise SubmissionMismatchError(
                name,
                f"output {hr.shape[1]}x{hr.shape[0]} gives {len(values)} values, sample_submission.csv has {expected} columns",
            )
        if manifest.pipeline.upscaler == "model":
            model = {"model": ctx.model_source, "model_sha256": ctx.model_sha256, "device": str(ctx.upscaler().device)}
        else:  # asking for the upscaler's device would load (or download) a model this run never uses
            model = {"model": manifest.pipeline.upscaler}
        _record_meta(ctx, manifest.run_id, name, "upscale", seconds=seconds, batch=batch, **model,
                     out_width=hr.shape[1], out_height=hr.shape[0])
        # The row goes last: its presence is what marks the image done.
        ctx.storage.put(keys.row(name), format_row(submission_id(name), values).encode())
    except PermanentImageError as exc:
        return record_failure(ctx, manifest.run_id, name, "upscale", exc.reason)
    except TransientError as exc:
        return Outcome(name, "retry", str(exc), error=exc)
    return Outcome(name, "done", seconds=seconds, size=size)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- stage 3: aggregate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AggregateResult:
    run_id: str
    total: int
    written: int
    failed: int
    pending: int
    complete: bool  # False: pending images remain and nothing was written

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in ("run_id", "total", "written", "failed", "pending", "complete")}


def aggregate_stage(ctx: StageContext, run_id: str, allow_partial: bool = False) -> AggregateResult:
    """Stream every row, in manifest order, into ``submission.csv``; list failures in ``failures.json``.

    Idempotent: it rewrites both files from the per-image objects each time. With images still
    pending it writes nothing unless ``allow_partial``.
    """
    manifest = load_manifest(ctx.storage, run_id)  # fresh: the name list may have grown
    keys = RunKeys(run_id)
    progress = RunProgress.read(ctx.storage, run_id)
    finished_stems = progress.done | progress.failed  # once: a union per name is quadratic in the run's size
    finished = [n for n in manifest.names if stem(n) in finished_stems]
    pending = [n for n in manifest.names if stem(n) not in finished_stems]
    if pending and not allow_partial:
        return AggregateResult(run_id, manifest.total, 0, 0, len(pending), complete=False)

    done = [n for n in manifest.names if stem(n) in progress.done]
    threads = ctx.settings.io_threads
    n_columns = manifest.expected_columns or _most_common_width(ctx.storage, keys, done, threads)

    def outcome(name: str) -> tuple[str, bool, bytes]:
        """(name, done?, its row or its failure record)."""
        if stem(name) in progress.done:
            return name, True, ctx.storage.get(keys.row(name))
        return name, False, ctx.storage.get(keys.failed(name))

    failures: list[dict[str, object]] = []
    with ctx.storage.writer(keys.submission) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = SubmissionWriter(text, n_columns)
        for name, is_done, data in fetch_in_order(outcome, finished, threads):
            if not is_done:
                failures.append(json.loads(data))
                continue
            try:
                writer.add(name, data.decode())
            except SubmissionMismatchError as exc:
                failures.append({"name": name, "stage": "aggregate", "reason": exc.reason})
        writer.close()
        text.flush()
        text.detach()
    failures.extend({"name": n, "stage": "listing", "reason": reason} for n, reason in manifest.rejected)
    failures.extend({"name": n, "stage": "pending", "reason": "not finished"} for n in pending)
    ctx.storage.put(keys.failures, json.dumps(failures, indent=1).encode())
    result = AggregateResult(run_id, manifest.total, writer.rows, len(failures) - len(pending), len(pending), True)
    ctx.storage.put(keys.summary, json.dumps({**result.as_dict(), "at": now_iso()}).encode())
    logger.info("run %s: submission with %d rows, %d failures", run_id, writer.rows, len(failures))
    return result


def _most_common_width(storage: Storage, keys: RunKeys, names: Sequence[str], threads: int) -> int | None:
    """Without a sample submission, the width most rows share wins (first seen on ties).

    An extra streaming pass over the rows; a run with a sample submission never pays it.
    """
    widths = Counter(fetch_in_order(lambda name: row_width(storage.get(keys.row(name)).decode()), names, threads))
    return max(widths, key=widths.__getitem__) if widths else None


def report_stage(ctx: StageContext, run_id: str) -> str:
    """Write the run's self-contained ``report.html``; return its key.

    Raises:
        TransientError: storage unreachable.
    """
    from workers.report import collect_report_data, render_report, write_report

    # collect_report_data reads the manifest itself; the source it names never changes, so the cached copy serves.
    data = collect_report_data(
        ctx.storage, ctx.source(ctx.manifest(run_id)), run_id, limits=ctx.limits, threads=ctx.settings.io_threads
    )
    return write_report(ctx.storage, run_id, render_report(data))
