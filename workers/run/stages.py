"""The per-image stages as plain functions over storage keys: no Celery.

Celery tasks (:mod:`workers.runtime.tasks`) and the in-process runner (:mod:`producer.embedded`)
both call exactly these, so the embedded default and the distributed system cannot drift apart.
The GPU stage fetches and decodes its inputs on the context's I/O threads ahead of the batch that
needs them, and encodes and uploads its outputs there while the next batch runs (on a CPU the model
and the I/O take turns instead); everything else runs in the caller's thread.

Each stage is idempotent: it returns at once if its output exists (``skipped`` when the image is
already finished, ``denoised`` when only the next stage remains). A permanent per-image problem
is recorded under ``failed/`` and returned as a ``failed`` outcome; a transient problem raises
(single-image stages) or is returned as a ``retry`` outcome (batch stage), never recorded. The
batch stage returns an unexpected error (a bug, ``cv2.error``) as a ``retry`` outcome too, with the
error and how many images shared it: the caller counts it and decides (:mod:`workers.run.attempts`).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from workers.errors import (
    DeviceLostError,
    DeviceOutOfMemoryError,
    ObjectNotFoundError,
    PermanentImageError,
    SubmissionMismatchError,
    TransientError,
)
from workers.io.imageio import decode_image, decode_png, encode_png, write_png
from workers.io.inflight import ordered_map
from workers.io.submission import grey_subsample, submission_id, write_row
from workers.ops.denoise import DenoiseSpec, denoise, denoise_on_device
from workers.ops.resample import resize_to_multiple
from workers.ops.tone import ToneCurve, tone_for_denoising
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec, RunManifest, now_iso
from workers.settings import Settings, code_version

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
    batch: int = 1  # how many images shared the pass (or the error) this outcome comes from

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "reason": self.reason, "seconds": round(self.seconds, 4)}


# -- recording -------------------------------------------------------------------------------------


def record_failure(ctx: StageContext, run_id: str, name: str, stage: str, reason: str, kind: str = "") -> Outcome:
    """Write ``failed/<stem>.json``; the image then counts as finished (failed) for the run. ``kind``
    says why when readers treat it apart (``worker-deaths``: the report does not decode the input)."""
    logger.warning("run %s: %s failed in %s: %s", run_id, name, stage, reason)
    record = {"name": name, "stage": stage, "reason": reason, "worker": ctx.hostname, "at": now_iso()}
    if kind:
        record["kind"] = kind
    ctx.storage.put(RunKeys(run_id).failed(name), json.dumps(record).encode())
    return Outcome(name, "failed", reason)


def error_outcome(name: str, error: BaseException, batch: int = 1) -> Outcome:
    """A ``retry`` outcome for ``error``, transient or not (the caller tells them apart)."""
    return Outcome(name, "retry", f"{type(error).__name__}: {error}", error=error, batch=batch)


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
    if not ctx.is_current(manifest):
        ctx.storage.delete(keys.denoised(name))
        raise ManifestReplacedError(run_id, name)
    seconds = time.perf_counter() - started
    height, width = rgb.shape[:2]
    _record_meta(ctx, run_id, name, "denoise", seconds=seconds, width=width, height=height, input_bytes=size_bytes)
    return Outcome(name, "denoised", seconds=seconds, size=(width, height))


class ManifestReplacedError(TransientError):
    """The run was enqueued again while a stage worked on one of its images: what the stage made came
    from what the old manifest named (perhaps another source's bytes) and is not kept; the retry
    reads the new one."""

    def __init__(self, run_id: str, name: str) -> None:
        super().__init__(f"run {run_id} was enqueued again while {name} was processed; redoing it from its new manifest")


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
    """The run's tone stage (if it has a curve) and the denoiser to run on the result."""
    return tone_for_denoising(rgb, pipeline.denoise, curve, pipeline.scale_nlm_by_gain)


# -- stage 2: upscale, write the 4x image and the submission row (GPU) --------------------------------------


@dataclass(frozen=True)
class _Loaded:
    """One image ready for the GPU stage."""

    name: str
    image: np.ndarray  # denoised (CPU placement), or tone-corrected and still noisy (GPU placement)
    denoise: DenoiseSpec | None  # what remains to run on the device; None once denoised


OnPass = Callable[[Sequence[str]], None]


@dataclass(frozen=True)
class GpuSchedule:
    """How the GPU stage arranges its I/O (HEADs, GETs, decoding; PNG encoding, uploads) around the
    device's work."""

    parallel_loads: bool = True  # fetch and decode on the I/O threads (False: one at a time, in this thread)
    overlap: bool = True  # I/O runs while the device computes (False: they take turns)

    @classmethod
    def for_device(cls, device: str) -> GpuSchedule:
        """On a GPU everything overlaps. On a CPU the model's threads and the I/O threads share the same
        cores, and torch's OpenMP threads spin at every layer while a sibling is descheduled: the two
        take turns, each with every core (measured: ``benchmarks/throughput.py``)."""
        return cls(parallel_loads=True, overlap=not device.startswith("cpu"))


# The GPU stage as it was before it loaded in parallel (``benchmarks/throughput.py`` compares).
SERIAL_LOADS = GpuSchedule(parallel_loads=False, overlap=True)


def upscale_stage(ctx: StageContext, run_id: str, names: Sequence[str], schedule: GpuSchedule | None = None,
                  on_pass: OnPass | None = None) -> list[Outcome]:
    """Upscale the images ``names`` of one run, same-size images in shared batches.

    With the CPU placement the inputs are the CPU stage's denoised images; with the GPU placement
    this stage also decodes the inputs and runs NL-means on the device first. Inputs are fetched and
    decoded on the I/O threads, in order, and a batch runs as soon as its images are ready, while
    the next ones still load; outputs are encoded and uploaded on the I/O threads while the next
    batch computes (``schedule``; default: :meth:`GpuSchedule.for_device` of the run's upscaler).
    ``on_pass(names)`` is called just before each forward pass: a worker marks what it is computing,
    so that its death is charged to those images only.

    Never raises for a single image: each distinct name gets one :class:`Outcome`, in first-seen
    order; transient problems and unexpected errors come back as ``retry`` outcomes carrying the
    error (and how many images shared it), for the caller to reschedule or give up.

    Raises:
        RunNotFoundError, TransientError: the run's manifest cannot be read.
        DeviceLostError: the device's CUDA context is broken; nothing more can run in this process.
    """
    return begin_upscale(ctx, run_id, names, schedule, on_pass).outcomes()


class UpscaleInFlight:
    """An :func:`upscale_stage` call whose computing is done and whose outputs may still be being
    encoded and stored on the I/O threads. :meth:`outcomes` waits for them."""

    def __init__(self, work: _GpuWork, names: list[str]) -> None:
        self._work, self._names = work, names

    @property
    def computed(self) -> list[str]:
        """The names whose outputs exist (stored or being stored)."""
        return list(self._work.stores)

    def outcomes(self) -> list[Outcome]:
        """Wait for every store; one outcome per distinct name, in first-seen order."""
        outcomes = self._work.finish()
        return [outcomes[name] for name in self._names]


def begin_upscale(ctx: StageContext, run_id: str, names: Sequence[str], schedule: GpuSchedule | None = None,
                  on_pass: OnPass | None = None) -> UpscaleInFlight:
    """:func:`upscale_stage` up to the last batch computed: returns while that batch's outputs are
    still being encoded and stored, so a caller can start on the next batch meanwhile (a GPU worker
    pipelining its batches) and collect the outcomes later.

    Raises:
        DeviceLostError: the device's CUDA context is broken; nothing more can run in this process.
    """
    manifest = ctx.manifest(run_id)
    schedule = schedule or GpuSchedule.for_device(upscaler_device(ctx, manifest.pipeline))
    unique = list(dict.fromkeys(names))  # de-duplicate, keep order
    work = _GpuWork(ctx, manifest, schedule, on_pass)
    groups: dict[tuple[int, int], list[_Loaded]] = defaultdict(list)
    for name, prepared in zip(unique, _prepared(ctx, manifest, unique, schedule), strict=True):
        if isinstance(prepared, Outcome):
            work.outcomes[name] = prepared
            continue
        shape = prepared.image.shape[:2]
        groups[shape].append(prepared)
        if len(groups[shape]) >= work.batch_size(shape):
            work.run(groups.pop(shape))
    for group in groups.values():
        work.run(group)
    return UpscaleInFlight(work, unique)


def upscaler_device(ctx: StageContext, pipeline: PipelineSpec) -> str:
    """Where the pipeline's upscaler computes ("cpu" for one without a model), without loading it."""
    from workers.ops.upscalers import upscaler_kind

    if not upscaler_kind(pipeline.upscaler).runs_checkpoint:
        return "cpu"
    from workers.ops.upscale import resolve_device

    return str(resolve_device(ctx.settings.device))


def _prepared(ctx: StageContext, manifest: RunManifest, names: list[str], schedule: GpuSchedule
              ) -> Iterator[_Loaded | Outcome]:
    """Each name's decoded input, or its outcome if there is nothing to compute, in order."""
    prepare = functools.partial(_prepare, ctx, manifest)
    if not schedule.parallel_loads:
        return map(prepare, names)
    loads = ordered_map(prepare, names, ctx.io_pool, ahead=max(1, 2 * ctx.settings.io_threads))
    return loads if schedule.overlap else iter(list(loads))  # taking turns: every load before any compute


def _prepare(ctx: StageContext, manifest: RunManifest, name: str) -> _Loaded | Outcome:
    try:
        if is_finished(ctx, manifest.run_id, name):
            return Outcome(name, "skipped")
        return _load_for_upscale(ctx, manifest, name)
    except PermanentImageError as exc:
        return record_failure(ctx, manifest.run_id, name, "upscale", exc.reason)
    except Exception as exc:  # transient or not, this image's alone: the caller decides
        return error_outcome(name, exc)


class _GpuWork:
    """The batches of one :func:`upscale_stage` call: computing them, and their stores in flight.

    A batch's outputs wait for the previous batch's to be stored, so at most two batches of 4x images
    exist, and only one where an image alone is above GPU_BATCH_PIXELS or the stages take turns.
    """

    def __init__(self, ctx: StageContext, manifest: RunManifest, schedule: GpuSchedule,
                 on_pass: OnPass | None = None) -> None:
        self.ctx, self.manifest, self.schedule, self.on_pass = ctx, manifest, schedule, on_pass
        self.outcomes: dict[str, Outcome] = {}
        self.stores: dict[str, Future[Outcome]] = {}
        self.side_writes: list[Future[None]] = []

    def batch_size(self, shape: tuple[int, int]) -> int:
        # taking turns is the CPU's arrangement (GpuSchedule.for_device), and so is its batch size
        return batch_size(self.ctx.settings, shape[0] * shape[1], on_cpu=not self.schedule.overlap)

    def run(self, batch: list[_Loaded]) -> None:
        height, width = batch[0].image.shape[:2]
        if not self.schedule.overlap or height * width > self.ctx.settings.gpu_batch_pixels:
            wait(self.stores.values())
        for part, outputs, per_image, error in _upscale_isolated(self.ctx, self.manifest, batch, self.side_writes,
                                                                 self.on_pass):
            if error is not None:
                self.outcomes.update((item.name, error_outcome(item.name, error, len(part))) for item in part)
                continue
            assert outputs is not None  # no error: the batch's outputs
            wait(self.stores.values())
            self.stores |= _submit_stores(self.ctx, self.manifest, part, outputs, per_image, (width, height))
            del outputs  # the stores hold what they need: the next batch must not meet this one

    def finish(self) -> dict[str, Outcome]:
        """Wait for every store; the outcome of every name this call was given."""
        run_id = self.manifest.run_id
        for name, future in self.stores.items():
            try:
                self.outcomes[name] = future.result()
            except Exception as exc:  # a storage bug or surprise fails this image's attempt alone
                logger.exception("run %s: storing %s failed unexpectedly; it will be retried", run_id, name)
                self.outcomes[name] = error_outcome(name, exc)
        for write in self.side_writes:  # intermediate images: for reports, never a reason to fail an image
            if write.exception() is not None:
                logger.warning("run %s: could not store a denoised image: %s", run_id, write.exception())
        return self.outcomes


def _upscale_isolated(ctx: StageContext, manifest: RunManifest, batch: list[_Loaded], side_writes: list[Future[None]],
                      on_pass: OnPass | None = None
                      ) -> Iterator[tuple[list[_Loaded], np.ndarray | None, float, BaseException | None]]:
    """(images, their 4x outputs, seconds per image, error) for a batch: together while that works;
    after an out-of-memory error that the upscaler's own splitting and tiling could not avoid, one
    image at a time, so only the image that cannot fit fails (and is retried, then given up). Any
    other error is the batch's, returned for each of its images with the batch's size."""
    started = time.perf_counter()
    try:
        if on_pass is not None:
            on_pass([item.name for item in batch])
        images = _denoise_on_device(ctx, manifest, batch, started, side_writes)
        outputs = upscale_images(ctx, images, manifest.pipeline)
        del images  # only the outputs go on
    except DeviceOutOfMemoryError as exc:
        if len(batch) == 1:
            yield batch, None, 0.0, exc
            return
        logger.warning("run %s: %s; upscaling these %d images one at a time", manifest.run_id, exc, len(batch))
        for item in batch:
            yield from _upscale_isolated(ctx, manifest, [item], side_writes, on_pass)
        return
    except DeviceLostError:
        raise  # not these images' fault: the process must go, the images back to the queue
    except Exception as exc:  # transient or a bug: the caller counts and retries it
        if not isinstance(exc, TransientError):
            logger.exception("run %s: unexpected error upscaling %d images", manifest.run_id, len(batch))
        yield batch, None, 0.0, exc
        return
    yield batch, outputs, (time.perf_counter() - started) / len(batch), None


def _submit_stores(ctx: StageContext, manifest: RunManifest, batch: list[_Loaded], outputs: np.ndarray,
                   seconds: float, size: tuple[int, int]) -> dict[str, Future[Outcome]]:
    """Each 4x image of a batch to :func:`_store_upscaled` on the I/O threads."""
    return {item.name: ctx.io_pool.submit(_store_upscaled, ctx, manifest, item.name, hr, seconds, size, len(batch))
            for item, hr in zip(batch, outputs, strict=True)}


def _load_for_upscale(ctx: StageContext, manifest: RunManifest, name: str) -> _Loaded:
    """The CPU stage's denoised image when it exists; otherwise the input, to denoise on the device
    (the GPU placement, or a run whose placement changed while this worker held its manifest)."""
    if manifest.pipeline.first_stage == "denoise":
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
    from workers.ops.upscale import resolve_device

    device = resolve_device(ctx.settings.device)
    by_spec: dict[DenoiseSpec, list[int]] = defaultdict(list)
    for i in pending:
        spec = batch[i].denoise
        if spec is not None:
            by_spec[spec].append(i)
    for spec, indices in by_spec.items():
        images[indices] = denoise_on_device(images[indices], spec, device, ctx.settings.tile_max_pixels)
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
    return ctx.upscaler_for(pipeline).upscale(images, pipeline.channel_order, tta=pipeline.tta)


def _store_upscaled(
    ctx: StageContext, manifest: RunManifest, name: str, hr: np.ndarray, seconds: float, size: tuple[int, int], batch: int
) -> Outcome:
    keys = RunKeys(manifest.run_id)
    try:
        if manifest.pipeline.resize_multiple:
            hr = resize_to_multiple(hr, manifest.pipeline.resize_multiple)
        values = grey_subsample(hr)
        with ctx.storage.writer(keys.sr(name)) as out:  # streamed: the PNG is never whole in memory
            write_png(hr, out)
        expected = manifest.expected_columns
        if expected is not None and len(values) != expected:
            raise SubmissionMismatchError(
                name,
                f"output {hr.shape[1]}x{hr.shape[0]} gives {len(values)} values, sample_submission.csv has {expected} columns",
            )
        model = ctx.upscaler_for(manifest.pipeline).describe()
        _record_meta(ctx, manifest.run_id, name, "upscale", seconds=seconds, batch=batch, **model,
                     out_width=hr.shape[1], out_height=hr.shape[0])
        if not ctx.is_current(manifest):
            raise ManifestReplacedError(manifest.run_id, name)
        # The row goes last: its presence is what marks the image done.
        with ctx.storage.writer(keys.row(name)) as out:
            write_row(out, submission_id(name), values)
    except PermanentImageError as exc:
        return record_failure(ctx, manifest.run_id, name, "upscale", exc.reason)
    except TransientError as exc:
        return Outcome(name, "retry", str(exc), error=exc, batch=batch)
    return Outcome(name, "done", seconds=seconds, size=size, batch=batch)


def batch_size(settings: Settings, pixels: int, on_cpu: bool = False) -> int:
    """How many same-size images of ``pixels`` each go through one forward pass: GPU_BATCH_SIZE
    (CPU_BATCH_SIZE when the model runs on a CPU), fewer where GPU_BATCH_PIXELS would be exceeded,
    never none (a larger image runs alone)."""
    most = settings.cpu_batch_size if on_cpu else settings.gpu_batch_size
    return max(1, min(most, settings.gpu_batch_pixels // pixels))
