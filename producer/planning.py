"""Create or resume a run: list the source, write the manifest, work out what is left to do."""

from __future__ import annotations

import io
import logging

from tqdm import tqdm

from producer.sources import SAMPLE_SUBMISSION, Source, resolve_source
from workers.errors import ConfigError, ObjectNotFoundError, RunNotFoundError
from workers.io.storage import LocalStorage, Storage, StorageFactory, join_key
from workers.io.submission import read_expected_columns
from workers.io.weights import describe_weights
from workers.ops.upscalers import upscaler_kind
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec, RunManifest, load_manifest, make_run_id, now_iso, save_manifest
from workers.run.plan import RunPlan, plan_remaining
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
) -> RunPlan:
    """List ``src``, save (or refresh) the run manifest and return the remaining work.

    Raises:
        ConfigError: bad source, unreadable sample submission, or ``run_id`` exists with other settings.
    """
    storages = StorageFactory(settings)
    source = resolve_source(src, storages)
    # A pipeline that runs no checkpoint (bicubic) does not depend on WEIGHTS: same run id.
    model = describe_weights(settings) if upscaler_kind(pipeline.upscaler).runs_checkpoint else pipeline.upscaler
    run_id = run_id or make_run_id(source.label, source.url, pipeline, model)
    keys = RunKeys(run_id)
    try:
        existing = load_manifest(storage, run_id)
    except RunNotFoundError:
        existing = None
    if existing and (existing.pipeline.content() != pipeline.content() or existing.model != model):
        raise ConfigError(f"run {run_id} already exists with a different pipeline or model; choose another --run")

    source_url = source.url
    if source.is_local and not isinstance(storage, LocalStorage):
        source_url = _upload_missing(source, storage, join_key(keys.root, "input"), show_progress)

    manifest = RunManifest(
        run_id=run_id,
        source=source_url,
        names=source.names,
        pipeline=pipeline,
        model=model,
        expected_columns=_expected_columns(source, sample_submission),
        rejected=source.rejected,
        created_at=existing.created_at if existing else now_iso(),
    )
    save_manifest(storage, manifest)
    if retry_failed:
        for name in manifest.names:
            storage.delete(keys.failed(name))
    return plan_remaining(storage, manifest)


def _expected_columns(source: Source, explicit: str | None) -> int | None:
    try:
        if explicit:
            with open(explicit, "rb") as f:
                return read_expected_columns(f)
        if source.sample_submission is not None:
            return read_expected_columns(io.BytesIO(source.sample_submission.get(SAMPLE_SUBMISSION)))
    except (OSError, ObjectNotFoundError) as exc:
        raise ConfigError(f"cannot read the sample submission: {exc}") from None
    return None


def _upload_missing(source: Source, storage: Storage, prefix: str, show_progress: bool) -> str:
    """Copy local inputs the store does not have yet; return the URL workers read them from."""
    present = {key.rsplit("/", 1)[-1] for key in storage.list(prefix)}
    missing = [n for n in source.names if n not in present]
    for name in tqdm(missing, desc="upload", unit="img", disable=not show_progress or not missing):
        storage.put(join_key(prefix, name), source.storage.get(name))
    return storage.url(prefix)
