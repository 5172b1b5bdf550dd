"""Create or resume a run: list the source, write the manifest, work out what is left to do."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from tqdm import tqdm

from producer.sources import SAMPLE_SUBMISSION, Source, resolve_source
from workers.errors import ConfigError, ObjectNotFoundError, RunCancelledError, RunNotFoundError
from workers.io.storage import LocalStorage, Storage, StorageFactory, fetch_in_order
from workers.io.submission import SampleSubmission, read_sample_submission
from workers.io.weights import describe_weights
from workers.ops.upscalers import upscaler_kind
from workers.run.attempts import forget_attempts
from workers.run.keys import RunKeys, RunProgress, stem
from workers.run.manifest import PipelineSpec, RunManifest, load_manifest, make_run_id, now_iso, save_manifest
from workers.run.registry import cancelled_at
from workers.run.remaining import RunPlan, plan_remaining
from workers.run.started import RunStart, record_start
from workers.settings import Settings

logger = logging.getLogger(__name__)


def prepare_run(
    settings: Settings,
    storage: Storage,
    src: str,
    pipeline: PipelineSpec,
    run_id: str | None = None,
    sample_submission: str | None = None,
    retry_failed: bool = False,
    show_progress: bool = False,
    resume_cancelled: bool = False,
) -> RunPlan:
    """List ``src``, save (or refresh) the run manifest and return the remaining work.

    Each input's fingerprint is recorded; an input whose bytes (or whose name for the same stem)
    differ from what an earlier enqueue of the run recorded has its outputs forgotten, so it is redone.
    ``retry_failed`` forgets the failures and the counted worker deaths and errors of unchanged inputs.
    The moment it began is recorded as the run's start (``started.json``, replacing an earlier
    enqueue's), with how much it left to do: the report's wall time and throughput count from there.

    Raises:
        ConfigError: bad source, two inputs with one submission ID, unreadable sample submission, or
            ``run_id`` exists with other settings.
        RunCancelledError: the run was cancelled and ``resume_cancelled`` is not set (nothing changed).
        TransientError: a store could not be reached.
    """
    started_at = now_iso()
    storages = StorageFactory(settings)
    source = resolve_source(src, storages, storage.key_prefix)
    model = run_model(settings, pipeline)
    run_id = run_id or make_run_id(source.label, source.url, pipeline, model)
    keys = RunKeys(run_id)
    try:
        existing = load_manifest(storage, run_id)
    except RunNotFoundError:
        existing = None
    if existing and (existing.pipeline.content() != pipeline.content() or existing.model != model):
        raise ConfigError(f"run {run_id} already exists with a different pipeline or model; choose another --run")
    cancelled = cancelled_at(storage, run_id)
    if cancelled is not None and not resume_cancelled:
        when = datetime.fromtimestamp(cancelled, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise RunCancelledError(f"run {run_id} was cancelled ({when}); pass --resume-cancelled to resume it")

    fingerprints = dict(zip(source.names, fetch_in_order(source.storage.fingerprint, source.names,
                                                         settings.io_threads), strict=True))
    stale = stale_names(existing, fingerprints)
    for name in stale:  # before the manifest records the new fingerprints
        logger.info("run %s: %s changed since it was processed; redoing it", run_id, name)
        _forget_outputs(storage, keys, name, uploaded_input=True)

    source_url = source.url
    if source.is_local and not isinstance(storage, LocalStorage):
        source_url = _upload_missing(source, storage, keys, show_progress)

    sample = _sample_submission(source, sample_submission)
    manifest = RunManifest(
        run_id=run_id,
        source=source_url,
        names=source.names,
        pipeline=pipeline,
        model=model,
        expected_columns=sample.columns if sample else None,
        rejected=source.rejected,
        created_at=existing.created_at if existing else now_iso(),
        fingerprints=_carried(existing, source.names) | fingerprints,
        expected_ids=sample.ids if sample else None,
    )
    save_manifest(storage, manifest)
    # Once more: a worker holding the old manifest may have stored an output between the first
    # deletion and the save (after the save, it sees the manifest replaced and keeps nothing).
    for name in stale:
        _forget_outputs(storage, keys, name)  # not the input: the new bytes were uploaded meanwhile
    if retry_failed:
        failed = RunProgress.read(storage, run_id).failed
        for name in manifest.names:
            if stem(name) in failed:
                storage.delete(keys.failed(name))
                forget_attempts(storage, run_id, name)
    plan = plan_remaining(storage, manifest)
    remaining = len(plan.to_denoise) + len(plan.to_upscale)
    record_start(storage, run_id, RunStart(started_at, remaining=remaining, finished=len(plan.finished)))
    return plan


def run_model(settings: Settings, pipeline: PipelineSpec) -> str:
    """The model a run records (and its id derives from): only what the pipeline runs. The run's own
    checkpoint, by key and hash, when it has one; else the workers' (the Hub's, or their WEIGHTS) for
    the Real-ESRGAN presets; the upscaler's name for one with no model."""
    if pipeline.checkpoint:
        return f"run:{pipeline.checkpoint}"
    if upscaler_kind(pipeline.upscaler).runs_checkpoint:
        return describe_weights(settings)
    return pipeline.upscaler


def _forget_outputs(storage: Storage, keys: RunKeys, name: str, uploaded_input: bool = False) -> None:
    for key in (*keys.outputs(name), *([keys.input(name)] if uploaded_input else [])):
        storage.delete(key)


def stale_names(previous: RunManifest | None, fingerprints: Mapping[str, str]) -> list[str]:
    """The names in ``fingerprints`` whose stored outputs were made from something else: their stem
    was recorded for another name (``test_a.png`` replaced by ``test_a.jpg``) or with other bytes.
    A name the previous manifest lists without a fingerprint (written before they existed) is
    trusted, so runs started by older versions resume."""
    if previous is None:
        return []
    made_from = {stem(n): (n, previous.fingerprints.get(n)) for n in (*previous.fingerprints, *previous.names)}
    stale = []
    for name, fingerprint in fingerprints.items():
        recorded = made_from.get(stem(name))
        if recorded is not None and (recorded[0] != name or recorded[1] not in (None, fingerprint)):
            stale.append(name)
    return stale


def _carried(previous: RunManifest | None, names: Sequence[str]) -> dict[str, str]:
    """Fingerprints of earlier inputs no longer listed whose outputs remain (one per stem): if such an
    input comes back changed, its outputs are not mistaken for its own."""
    listed = {stem(n) for n in names}
    return {n: f for n, f in (previous.fingerprints if previous else {}).items() if stem(n) not in listed}


def _sample_submission(source: Source, explicit: str | None) -> SampleSubmission | None:
    try:
        if explicit:
            with open(explicit, "rb") as f:
                return read_sample_submission(f)
        if source.sample_submission is not None:
            return read_sample_submission(io.BytesIO(source.sample_submission.get(SAMPLE_SUBMISSION)))
    except (OSError, ObjectNotFoundError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the sample submission: {exc}") from None
    return None


def _upload_missing(source: Source, storage: Storage, keys: RunKeys, show_progress: bool) -> str:
    """Copy local inputs the store does not have yet; return the URL workers read them from."""
    prefix = keys.prefix("input")
    present = {key.rsplit("/", 1)[-1] for key in storage.list(prefix)}
    missing = [n for n in source.names if n not in present]
    for name in tqdm(missing, desc="upload", unit="img", disable=not show_progress or not missing):
        storage.put(keys.input(name), source.storage.get(name))
    return storage.url(prefix)
