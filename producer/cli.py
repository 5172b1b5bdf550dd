"""``producer``: enqueue runs, watch them, collect and score their results.

Every deployment setting is a flag and an environment variable of the same name (``--broker-url`` /
``BROKER_URL``); secrets come from the environment only. With no broker configured, ``enqueue``
runs the whole pipeline in this process (the embedded default).

Exit status: 0 all images done, 1 some images failed (see the failures report), 2 an error stopped
the command (its one-line message says why).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from tqdm.contrib.logging import logging_redirect_tqdm

from producer.backend import TrainRequest, backend_for
from producer.options import Group, settings_options
from workers.errors import ConfigError, EnhanceError
from workers.io.storage import Storage, StorageFactory
from workers.ops.denoise import DENOISERS, DenoiseSpec
from workers.run.attempts import stored_attempts
from workers.run.keys import ImageState, RunKeys, RunProgress
from workers.run.manifest import load_manifest
from workers.run.presets import PRESETS
from workers.run.registry import cancelled_at
from workers.run.resolve import PipelineChoice
from workers.settings import Settings, code_version

EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


_DENOISE_OPTIONS = ("denoise_method", "nlm_h", "nlm_h_color", "nlm_template", "nlm_search")


def _pipeline_options(command: Callable[..., Any]) -> Callable[..., Any]:
    defaults = DenoiseSpec()
    options = [
        click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None, envvar="PRESET", metavar="NAME",
                     help="learned (default: the dataset's model from `producer train`, else the shipped one), seed "
                     "(the Kaggle notebook exactly), standard (its stages done right), quality (calibrated NL-means "
                     "+ bicubic), perceptual (calibrated NL-means + Real-ESRGAN)."),
        click.option("--tta", is_flag=True, envvar="TTA", help="learned: x8 self-ensemble (about 8x the upscaling time)."),
        click.option("--seed-compat", is_flag=True, envvar="SEED_COMPAT", hidden=True, help="Same as --preset seed."),
        click.option("--denoise-on", type=click.Choice(["cpu", "gpu"]), default="cpu", envvar="DENOISE_ON",
                     show_default=True, help="Where NL-means runs: CPU workers, or fused into the GPU task (same "
                     "output; when cores are scarce)."),
        click.option("--calibration", envvar="CALIBRATION", metavar="PATH|URL", help="From `producer calibrate` "
                     "(quality and perceptual default to DATASET/calibration.json)."),
        click.option("--denoise", "denoise_method", type=click.Choice(sorted(DENOISERS)), default=defaults.method,
                     envvar="DENOISE", show_default=True, help="Denoiser (learned: none unless named)."),
        click.option("--nlm-h", type=float, default=defaults.h, envvar="NLM_H", show_default=True,
                     help="NL-means strength."),
        click.option("--nlm-h-color", type=float, default=defaults.h_color, envvar="NLM_H_COLOR", show_default=True,
                     help="NL-means colour strength."),
        click.option("--nlm-template", type=int, default=defaults.template, envvar="NLM_TEMPLATE", show_default=True,
                     help="NL-means template window (odd)."),
        click.option("--nlm-search", type=int, default=defaults.search, envvar="NLM_SEARCH", show_default=True,
                     help="NL-means search window (odd)."),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        spec = DenoiseSpec(
            method=kwargs.pop("denoise_method"),
            h=kwargs.pop("nlm_h"),
            h_color=kwargs.pop("nlm_h_color"),
            template=kwargs.pop("nlm_template"),
            search=kwargs.pop("nlm_search"),
        )
        preset = kwargs.pop("preset")
        if kwargs.pop("seed_compat"):
            preset = "seed"
        context = click.get_current_context()
        given = {click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT}
        # WEIGHTS / --weights: the checkpoint this run runs, whatever the preset (published into the
        # run store by hash, so every worker runs that very file).
        named = context.get_parameter_source("weights") in given and bool(kwargs.get("weights"))
        checkpoint = kwargs["weights"] if named else None
        denoise_given = any(context.get_parameter_source(name) in given for name in _DENOISE_OPTIONS)
        kwargs["choice"] = PipelineChoice(preset, spec, kwargs.pop("calibration"), kwargs.pop("denoise_on"),
                                          kwargs.pop("tta"), checkpoint, denoise_given=denoise_given)
        return command(**kwargs)

    return wrapper


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(code_version(), "-V", "--version", prog_name="producer", message="%(prog)s (lowlight-sr) %(version)s")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Denoise and 4x super-resolve low-light images; write a competition submission.csv.

    Quick start (no servers needed): producer enqueue dataset/
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    # Plain lines for a person at the default level; times and module names when asked for more.
    layout = "%(levelname)s: %(message)s" if not verbose else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=layout)


@cli.command()
@click.argument("src")
@click.option("--run", "run_id", envvar="RUN_ID", metavar="NAME",
              help="Run id (default: from SRC and the pipeline, so re-running resumes).")
@click.option("--sample-submission", type=click.Path(dir_okay=False, exists=True), envvar="SAMPLE_SUBMISSION",
              help="Check the submission against it (default: SRC/sample_submission.csv).")
@click.option("--retry-failed", is_flag=True, help="Try earlier failures again (their counted deaths and errors too).")
@click.option("--resume-cancelled", is_flag=True, help="Resume a run that `producer cancel` stopped.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="With a broker: follow the run to its end.")
@_pipeline_options
@settings_options
def enqueue(src: str, run_id: str | None, sample_submission: str | None, retry_failed: bool, resume_cancelled: bool,
            wait: bool, choice: PipelineChoice, settings: Settings) -> None:
    """Process every image in SRC (a folder, a dataset root with test/, or s3://bucket/prefix)."""
    from producer.planning import prepare_run
    from workers.run.context import StageContext
    from workers.run.resolve import resolve_pipeline

    ctx = StageContext(settings)
    resolved = resolve_pipeline(choice, src, ctx.storages, ctx.storage)
    click.echo(f"preset {resolved.pipeline.preset}" + (f": {resolved.note}" if resolved.note else "")
               + ("" if choice.preset else "; --preset to choose another"))
    plan = prepare_run(settings, ctx.storage, src, resolved.pipeline, run_id, sample_submission, retry_failed,
                       show_progress=True, resume_cancelled=resume_cancelled)
    click.echo(f"run {plan.run_id}: {plan.manifest.total} inputs, {len(plan.finished)} already finished")
    with logging_redirect_tqdm():  # log lines above the progress bar, not glued to it
        result = backend_for(settings).run(ctx, plan, wait)
    for model in ctx.loaded():
        if model.get("precision"):
            click.echo(f"model ran in {model['precision']} on {model['device']} ({model['precision_reason']})")
    if result is not None:
        _report_result(ctx.storage, plan.run_id, result.written, result.failed, result.pending)


def _storage(settings: Settings) -> Storage:
    """The run store alone, for commands that neither process images nor load a model."""
    return StorageFactory(settings).open(settings.storage_url)


SHOWN_FAILURES = 10


def _report_result(storage: Storage, run_id: str, written: int, failed: int, pending: int) -> None:
    keys = RunKeys(run_id)
    click.echo(f"run {run_id}: {written} rows written, {failed} failed, {pending} pending")
    click.echo(f"  submission: {storage.url(keys.submission)}")
    click.echo(f"  failures:   {storage.url(keys.failures)}")
    if storage.exists(keys.report):
        click.echo(f"  report:     {storage.url(keys.report)}")
    if failed:
        failures = [f for f in json.loads(storage.get(keys.failures)) if f["stage"] != "pending"]
        click.echo(f"failed ({len(failures)}):")
        for failure in failures[:SHOWN_FAILURES]:
            click.echo(f"  {failure['name']}: {failure['reason']} ({failure['stage']})")
        if len(failures) > SHOWN_FAILURES:
            click.echo(f"  and {len(failures) - SHOWN_FAILURES} more, see {storage.url(keys.failures)}")
    if failed or pending:
        sys.exit(EXIT_FAILURES)


@cli.command()
@click.argument("run_id")
@settings_options
def status(run_id: str, settings: Settings) -> None:
    """Counts per stage, progress and recovery, and the failures of RUN_ID."""
    from workers.run.aggregate import is_current_summary

    storage = _storage(settings)
    manifest = load_manifest(storage, run_id)
    keys = RunKeys(run_id)
    counts = RunProgress.read(storage, run_id).counts(manifest.names)
    click.echo(f"run {run_id}  source {manifest.source}  created {manifest.created_at}")
    click.echo("  stages: " + "  ".join(f"{state.value} {n}" for state, n in counts.items())
               + f"  rejected {len(manifest.rejected)}  total {manifest.total}")
    waiting = counts[ImageState.PENDING] + counts[ImageState.DENOISED]
    cancelled = cancelled_at(storage, run_id)
    if cancelled is not None:
        click.echo(f"  cancelled {datetime.fromtimestamp(cancelled, UTC):%Y-%m-%d %H:%M:%S UTC}; "
                   "`producer enqueue --resume-cancelled` resumes it")
    if waiting:
        if manifest.pipeline.first_stage == "denoise":
            click.echo(f"  queued or in progress: {counts[ImageState.PENDING]} at the CPU stage, "
                       f"{counts[ImageState.DENOISED]} at the GPU stage")
        else:
            click.echo(f"  queued or in progress: {waiting} at the GPU stage (this pipeline has no CPU stage)")
        progress = RunProgress.read(storage, run_id)
        for attempts in stored_attempts(storage, run_id):
            if progress.state(attempts.name) in (ImageState.PENDING, ImageState.DENOISED):
                click.echo(f"  suspect {attempts.name} at {attempts.stage}: {attempts.deaths} worker deaths, "
                           f"{attempts.errors} errors (last on {attempts.last_worker})")
    if waiting:
        for line in backend_for(settings).progress_lines(run_id):
            click.echo(f"  {line}")
    if not storage.exists(keys.summary):
        click.echo("  not aggregated yet")
        return
    summary = json.loads(storage.get(keys.summary))
    if not is_current_summary(summary, manifest):
        click.echo(f"  not aggregated since the inputs changed (last aggregated {summary.get('at', '?')}, "
                   f"for another listing); `producer aggregate {run_id}` brings it up to date")
        return
    click.echo(f"  submission: {summary['written']} rows, {summary['failed']} failed, {summary['pending']} pending"
               f" (aggregated {summary['at']}) -> {storage.url(keys.submission)}")
    for failure in json.loads(storage.get(keys.failures)):
        click.echo(f"  failed ({failure['stage']}) {failure['name']}: {failure['reason']}")


@cli.command()
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Show this many.")
@settings_options
def runs(limit: int, settings: Settings) -> None:
    """The runs in STORAGE_URL, newest first: id, preset, state, counts, age and source."""
    from producer.runs import format_runs, list_runs

    storage = _storage(settings)
    lines = list_runs(storage, limit, settings.io_threads)
    if not lines:
        click.echo(f"no runs in {storage.url('runs')}")
        return
    click.echo(format_runs(lines))


@cli.command()
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default="submission.csv",
              show_default=True, help="Where to write the submission.")
@settings_options
def collect(run_id: str, output: str, settings: Settings) -> None:
    """Download RUN_ID's submission.csv."""
    storage = _storage(settings)
    load_manifest(storage, run_id)  # a run that does not exist is called so
    key = RunKeys(run_id).submission
    if not storage.exists(key):
        raise ConfigError(f"run {run_id} has no submission yet (see: producer status {run_id})")
    tmp = Path(output).with_name(Path(output).name + ".part")
    with tmp.open("wb") as out:
        storage.copy_to(key, out)
    tmp.replace(output)
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.argument("destination")
@settings_options
def upload(folder: str, destination: str, settings: Settings) -> None:
    """Copy FOLDER (every file, sub-folders kept) to DESTINATION, e.g. s3://bucket/photos, with the
    producer's own storage settings; then `producer enqueue DESTINATION`.

    `producer enqueue FOLDER` with a broker uploads the inputs into the run itself: upload a folder
    to process it more than once, or a dataset (train/ pairs) for `producer calibrate` and `train`.
    """
    from producer.upload import upload_folder

    count = upload_folder(Path(folder), StorageFactory(settings).open(destination), show_progress=True)
    click.echo(f"uploaded {count} files to {destination.rstrip('/')}/")


@cli.command()
@click.argument("run_id")
@click.option("--partial", is_flag=True, help="Write the submission even though images are still pending.")
@settings_options
def aggregate(run_id: str, partial: bool, settings: Settings) -> None:
    """(Re)build RUN_ID's submission.csv and failures report. Idempotent."""
    result = backend_for(settings).aggregate(run_id, partial)
    if not result["complete"]:
        raise ConfigError(f"run {run_id} has {result['pending']} images pending; wait, or pass --partial")
    click.echo(f"run {run_id}: {result['written']} rows, {result['failed']} failed")


@cli.command()
@click.argument("run_id")
@settings_options
def cancel(run_id: str, settings: Settings) -> None:
    """Cancel RUN_ID: workers drop its queued tasks, and nothing sends its work again (the cancel is
    kept in storage); `producer enqueue --resume-cancelled` resumes it."""
    backend = backend_for(settings)
    storage = _storage(settings)
    manifest = load_manifest(storage, run_id)  # a clear error for a run that does not exist
    backend.cancel(storage, run_id, manifest.total)
    click.echo(f"run {run_id} cancelled; finished images are kept; `producer enqueue --resume-cancelled` resumes it")


@cli.command()
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default="report.html",
              show_default=True, help="Where to write the HTML report.")
@click.option("--gt", type=click.Path(file_okay=False, exists=True),
              help="Ground truth (gt_X.* per input val_X.*): adds per-image PSNR/SSIM, worst first.")
@click.option("--max-images", type=click.IntRange(min=0), default=60, show_default=True,
              help="Most images shown (the rest are counted).")
@settings_options
def report(run_id: str, output: str, gt: str | None, max_images: int, settings: Settings) -> None:
    """Write a self-contained HTML report of RUN_ID (settings, timings, images side by side, failures)."""
    from workers.report import collect_report_data, render_report, truth_by_name
    from workers.run.context import StageContext

    ctx = StageContext(settings)
    manifest = load_manifest(ctx.storage, run_id)
    truth = truth_by_name(manifest.names, Path(gt)) if gt else None
    data = collect_report_data(
        ctx.storage, ctx.source(manifest), run_id, truth, max_images, ctx.limits, ctx.settings.io_threads
    )
    page = render_report(data).encode("utf-8")
    tmp = Path(output).with_name(Path(output).name + ".part")
    tmp.write_bytes(page)
    tmp.replace(output)
    click.echo(f"wrote {output} ({len(page) // 1024} KiB)")


@cli.command()
@click.argument("dataset")
@click.option("-o", "--output", help="Where to store the artifact (default: DATASET/calibration.json).")
@settings_options
def calibrate(dataset: str, output: str | None, settings: Settings) -> None:
    """Measure DATASET's degradation on its training pairs (train/train -> train/gt; never val/ or test/).

    Fits the forward model (downscale kernel, brightness ratio, noise gain and read variance,
    quantisation), a tone curve (applied only when input and target differ in brightness) and the
    NL-means strength of the classical presets; writes calibration.json. Streaming: memory stays
    flat in the number of pairs. A dataset in object storage (s3://...) is calibrated by a CPU
    worker when a broker is configured.
    """
    lines, pairs, where = backend_for(settings).calibrate(dataset, output)
    click.echo(f"calibrated on {pairs} pairs -> {where}")
    for line in lines:
        click.echo(f"  {line}")


def _train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The training recipe's flags (TRAIN_* in the environment); the command receives ``config``."""
    from workers.training.config import DEFAULT_STEPS, TrainConfig

    d = TrainConfig()
    options = [
        click.option("--steps", type=click.IntRange(min=1), default=None, envvar="TRAIN_STEPS",
                     help=f"Optimiser steps in all (a re-run continues up to this many). Default: {DEFAULT_STEPS} "
                     "when --minutes is not given, else unbounded."),
        click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=None, envvar="TRAIN_MINUTES",
                     help="Train this many minutes (the schedule fits the budget; given alone it is the whole budget); "
                     "the best checkpoint is kept. Re-running after the budget is used up trains a new phase."),
        click.option("--seed", type=int, default=d.seed, envvar="TRAIN_SEED", show_default=True,
                     help="Seed of crops, flips and fresh noise: the same seed gives the same weights on a CPU."),
        click.option("--batch", type=click.IntRange(min=1), default=d.batch, envvar="TRAIN_BATCH", show_default=True),
        click.option("--crop", type=click.IntRange(min=4), default=d.crop, envvar="TRAIN_CROP", show_default=True,
                     help="Input crop side in pixels (the target crop is 4x)."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=d.lr, envvar="TRAIN_LR", show_default=True),
        click.option("--loss", type=click.Choice(["l1", "charbonnier"]), default=d.loss, envvar="TRAIN_LOSS", show_default=True),
        click.option("--luma-weight", type=click.FloatRange(0, 1), default=d.luma_weight, envvar="TRAIN_LUMA_WEIGHT",
                     show_default=True, help="Share of the loss on the luma the competition scores."),
        click.option("--fresh-share", type=click.FloatRange(0, 1), default=d.fresh_share, envvar="TRAIN_FRESH_SHARE",
                     show_default=True, help="Share of each batch re-synthesised from its targets with the calibrated "
                     "forward model (new noise every step)."),
        click.option("--photo-share", type=click.FloatRange(0, 1), default=d.photo_share, envvar="TRAIN_PHOTO_SHARE",
                     show_default=True, help="Share of each batch cut from clean photos (--photos, DATASET/photos), "
                     "when there are pairs too."),
        click.option("--ema", "ema_decay", type=click.FloatRange(0, 1, max_open=True), default=d.ema_decay,
                     envvar="TRAIN_EMA", show_default=True, help="Decay of the weights' moving average (what is saved)."),
        click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=d.holdout, envvar="TRAIN_HOLDOUT",
                     show_default=True, help="Share of the training pairs held back to pick the best checkpoint (never val/)."),
        click.option("--holdout-crops", type=click.IntRange(min=0), default=d.holdout_crops, envvar="TRAIN_HOLDOUT_CROPS",
                     show_default=True, help="Textured crops of held-back photos added to the held-back set."),
        click.option("--eval-every", type=click.IntRange(min=1), default=d.eval_every, envvar="TRAIN_EVAL_EVERY",
                     show_default=True, help="Steps between held-back evaluations (and saved states)."),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        names = ("steps", "minutes", "seed", "batch", "crop", "lr", "loss", "luma_weight", "fresh_share", "photo_share",
                 "ema_decay", "holdout", "holdout_crops", "eval_every")
        kwargs["config"] = TrainConfig(**{name: kwargs.pop(name) for name in names})
        return command(**kwargs)

    return wrapper


@cli.command()
@click.argument("dataset", required=False)
@click.option("--photos", envvar="PHOTOS", help="Clean photos to learn from too (a folder or s3:// prefix, e.g. the "
              "corpus scripts/fetch-photo-corpus makes): each is degraded with the calibrated forward model at a "
              "brightness drawn from the calibration. Default: DATASET/photos when it exists. Alone (no DATASET): "
              "the competition's forward model, and -o is required.")
@click.option("--from", "start", envvar="TRAIN_FROM", help="Checkpoint to start from: a path, hf:repo/file@rev (any "
              "spandrel-loadable 4x RGB model; RRDBNet works too) or shipped:NAME. Default: the shipped model "
              "(SHIPPED_MODEL), kept as the output unless fine-tuning beats it on the held-back set.")
@click.option("-o", "--output", help="Where the checkpoint goes (default: DATASET/trained_x4.safetensors).")
@click.option("--restart", is_flag=True, help="Ignore a saved training state and start again from --from.")
@_train_options
@settings_options
def train(dataset: str | None, photos: str | None, start: str | None, output: str | None, restart: bool, config: Any,
          settings: Settings) -> None:
    """Train a fast 4x model for --preset learned on DATASET's training pairs (never val/ or test/)
    and/or on clean photos (--photos).

    Fresh degradations from the calibrated forward model, EMA weights, and the best checkpoint by
    PSNR on a held-back set (pairs and photo crops); a fine-tune that never beats its start keeps
    the start. Ctrl-C keeps the last good checkpoint; re-running the same command resumes, and
    re-running a finished one trains a new phase. With a broker configured and DATASET in object
    storage, a worker serving the `train` queue trains and this command follows it.
    """
    if dataset is None and photos is None:
        raise click.UsageError("give a DATASET, --photos DIR, or both")
    result = backend_for(settings).train(TrainRequest(dataset, output, start, config, restart, photos))
    best = f"{result.best_psnr:.2f} dB" if result.best_psnr is not None else "n/a (nothing held back)"
    state = "budget used" if result.finished else "stopped early; re-run to go on"
    click.echo(f"trained {result.steps} steps ({state}) in {result.seconds:.0f} s; best held-back PSNR {best} "
               f"at step {result.best_step} -> {result.output}")
    if result.kept_start:
        click.echo(f"  no step beat the start checkpoint ({best} on the held-back set): kept the start's weights")
    elif result.kept_output:
        click.echo(f"  no step beat the model already at {result.output} ({best} on the held-back set): kept it")
    for line in result.notes:
        click.echo(f"  {line}")
    for key, reason in result.skipped:
        click.echo(f"  skipped {key}: {reason}")


@cli.command()
@click.argument("dataset", type=click.Path(file_okay=False, exists=True))
@click.option("--preset", "presets", multiple=True, type=click.Choice(sorted(PRESETS)),
              help="Preset to score (repeatable). Default: all; those needing a calibration or a trained model "
              "only when the dataset has one. learned is scored with and without --tta.")
@click.option("--calibration", envvar="CALIBRATION", help="Calibration artifact (default: DATASET/calibration.json).")
@click.option("--run", "run_ids", multiple=True, help="Also score these existing runs (repeatable).")
@click.option("--inputs", type=click.Path(file_okay=False, exists=True), help="Inputs (default: DATASET/val/val).")
@click.option("--gt", type=click.Path(file_okay=False, exists=True), help="Ground truth (default: DATASET/val/gt).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also score bicubic and NL-means + bicubic (seed and calibrated strength; tone + bicubic "
              "where the tone stage applies).")
@settings_options
def evaluate(dataset: str, presets: tuple[str, ...], calibration: str | None, run_ids: tuple[str, ...],
             inputs: str | None, gt: str | None, baselines: bool, settings: Settings) -> None:
    """Competition PSNR and SSIM of the presets (and baselines) on DATASET's validation split.

    Each preset runs through the normal pipeline (in-process, or on the workers when a broker is
    configured) and is scored from its submission rows.
    """
    from producer import evaluate as ev
    from producer.planning import prepare_run
    from workers.run.context import StageContext
    from workers.run.presets import TAKES_CALIBRATION
    from workers.run.resolve import resolve_pipeline
    from workers.training.artifacts import TRAINED_FILE
    from workers.training.calibrate import default_location, load_calibration

    inputs_dir = Path(inputs) if inputs else Path(dataset) / ev.VAL_INPUTS
    pairs = ev.truth_pairs(inputs_dir, Path(gt) if gt else Path(dataset) / ev.VAL_TRUTH)
    ctx = StageContext(settings)
    scores = []
    own_model = (Path(dataset) / TRAINED_FILE).is_file()
    variants: list[tuple[str, str, bool, bool]] = []  # (label, preset, tta, the dataset's own model)
    for preset in presets or list(PRESETS):
        if preset != "learned":
            variants.append((preset, preset, False, False))
            continue
        for own in (False, True) if own_model else (False,):
            model = "learned (fine-tuned)" if own else "learned (shipped)"
            variants += [(model, preset, False, own), (f"{model} + tta", preset, True, own)]
    for label, preset, tta, own in variants:
        choice = PipelineChoice(preset, DenoiseSpec(), calibration if preset in TAKES_CALIBRATION else None, tta=tta,
                                dataset_model=own)
        try:
            pipeline = resolve_pipeline(choice, dataset, ctx.storages, ctx.storage).pipeline
        except ConfigError as exc:
            if presets:
                raise
            click.echo(f"skipping preset {label}: {exc}", err=True)
            continue
        plan = prepare_run(settings, ctx.storage, str(inputs_dir), pipeline, show_progress=True)
        backend_for(settings).run(ctx, plan)
        scores.append(ev.score_run(ctx.storage, plan.manifest, pairs, f"{label} (run {plan.run_id})", ctx.limits))
    for run_id in run_ids:
        scores.append(ev.score_run(ctx.storage, load_manifest(ctx.storage, run_id), pairs, f"run {run_id}", ctx.limits))
    if baselines:
        location = calibration or default_location(dataset)
        calibrated = load_calibration(location, ctx.storages) if calibration or Path(location).is_file() else None
        scores += ev.baselines(pairs, DenoiseSpec(), calibrated, ctx.limits)
    click.echo(ev.format_table(scores))


def main() -> None:
    """Console entry point: one line per error, never a traceback for expected failures."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        _exit(EXIT_ERROR)
    except click.ClickException as exc:
        exc.show()
        _exit(EXIT_ERROR)
    except EnhanceError as exc:
        click.echo(f"error: {exc}", err=True)
        _exit(EXIT_ERROR)
    except PermissionError as exc:  # an output folder the user cannot write (a container's mount, say)
        click.echo(f"error: {exc.strerror}: {exc.filename} (this process runs as uid {os.getuid()})", err=True)
        _exit(EXIT_ERROR)
    except SystemExit as exc:
        _exit(exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_ERROR),
              exc if not isinstance(exc.code, int | None) else None)
    except KeyboardInterrupt:
        click.echo("interrupted; re-run the same command to resume", err=True)
        _exit(EXIT_ERROR)
    except Exception as exc:  # connection errors from redis/kombu/urllib3 and friends
        if _is_connection_error(exc):
            click.echo(f"error: cannot reach a server: {exc}", err=True)
            _exit(EXIT_ERROR)
        raise
    _exit(EXIT_OK)


def _exit(code: int, exc: SystemExit | None = None) -> None:
    """End the process with ``code`` once the command is done.

    With torch loaded, the interpreter's teardown of its module graph (torch, and the sympy and dynamo that
    spandrel's torchvision pulls in) takes over a second that no output waits for: the streams are flushed,
    logging is shut down, and the process ends without it. The command has already waited for its own work
    (the stage context's writes, the thread pools)."""
    if exc is not None:
        raise exc  # a message as exit status (click's sys.exit("...")): the interpreter prints it
    if "torch" not in sys.modules or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)  # a profiler or coverage writes its data at the normal exit
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _is_connection_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectionError", "OperationalError", "TimeoutError", "MaxRetryError"})


if __name__ == "__main__":
    main()
