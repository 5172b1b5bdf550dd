"""The embedded default: run a whole run in this process, no broker, same stage functions.

With the upscaler on a GPU, CPU denoising runs in a thread pool (OpenCV releases the GIL) while the
main thread upscales whatever is already denoised, so the two stages overlap. With the upscaler on
the CPU the stages take turns, one batch at a time, each with every core: overlapped, NL-means
threads and torch's threads would fight over the same cores (torch's OpenMP threads spin while
waiting for a descheduled sibling), and the pipeline must never be slower than the serial loop it
replaces.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import cv2
from tqdm import tqdm

from producer.planning import RunPlan
from workers.errors import TransientError
from workers.report import report_stage
from workers.run.aggregate import AggregateResult, aggregate_stage
from workers.run.context import StageContext
from workers.run.keys import RunProgress, stem
from workers.run.retries import RetryLater
from workers.run.stages import Outcome, denoise_stage, error_outcome, upscale_stage

logger = logging.getLogger(__name__)


def run_embedded(ctx: StageContext, plan: RunPlan, show_progress: bool = True) -> AggregateResult:
    """Process everything ``plan`` has left, then aggregate. Re-running after an interruption resumes.

    An image's errors go through the workers' failure policy (:mod:`workers.run.policy`): retried
    with their backoff, then recorded as failed with the same reason a worker gives (transient
    errors after TASK_MAX_RETRIES, any other after TASK_MAX_ERRORS); the run goes on. A
    configuration error stops the command.

    Raises:
        TransientError: storage trouble outside the images' stages (the manifest, the aggregation);
            nothing finished is lost, re-run to resume.
        ConfigError: e.g. the weights cannot be found, the run store is full.
        DeviceLostError: the device's CUDA context is broken.
    """
    run_id = plan.run_id
    settings = ctx.settings
    cv2.setNumThreads(settings.opencv_threads)
    threads = settings.cpu_workers or os.cpu_count() or 1
    overlap = False
    if plan.to_denoise or plan.to_upscale:
        # A missing model should fail before any work, not after the CPU stage.
        device = ctx.upscaler_for(plan.manifest.pipeline).describe().get("device", "cpu")
        overlap = not device.startswith("cpu")
    bar = tqdm(
        total=plan.manifest.total,
        initial=len(plan.finished) + len(plan.manifest.rejected),
        desc=f"run {run_id}",
        unit="img",
        disable=not show_progress,
    )
    # The count the summary will print: earlier failures and refusals at listing included.
    failed = len(plan.manifest.rejected) + len(RunProgress.read(ctx.storage, run_id).failed & {stem(n) for n in plan.finished})
    bar.set_postfix(failed=failed)

    def finish(outcome: Outcome) -> None:
        nonlocal failed
        failed += outcome.status == "failed"
        bar.update(1)
        bar.set_postfix(failed=failed)

    # With denoising fused into the GPU stage there is no CPU stage: everything goes to the upscaler.
    fused = plan.manifest.pipeline.first_stage == "upscale"
    ready = list(plan.to_denoise + plan.to_upscale) if fused else list(plan.to_upscale)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="denoise")
    retries = RetryLater(ctx, run_id)  # one image's errors end it failed after its retries; the run goes on

    def retry_later(outcome: Outcome, stage: str) -> None:
        given_up = retries.add(outcome.name, stage, outcome.error or TransientError(outcome.reason), outcome.batch)
        if given_up is not None:
            finish(given_up)

    try:
        cpu_work = () if fused else plan.to_denoise
        # Taking turns: a window of one batch is denoised (every core), then upscaled (every core).
        window = len(cpu_work) if overlap else settings.gpu_batch_size
        queued = list(cpu_work)
        pending: dict[Future[Outcome], str] = {}
        while pending or ready or queued or retries:
            for name, stage in retries.due():
                (queued if stage == "denoise" else ready).append(name)
            if not pending and queued and (overlap or not ready):
                pending = {pool.submit(denoise_stage, ctx, run_id, n): n for n in queued[:window]}
                queued = queued[window:]
            if pending:
                # Overlapping: block only when there is nothing to upscale, else collect what finished.
                # Taking turns: the whole window first.
                done, _ = wait(pending, timeout=settings.gpu_batch_wait_s if ready and overlap else None,
                               return_when=FIRST_COMPLETED if overlap else ALL_COMPLETED)
                for future in done:
                    name = pending.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as exc:  # the policy decides: retried, failed, or the run stops
                        retry_later(error_outcome(name, exc), "denoise")
                        continue
                    if outcome.status == "failed":
                        finish(outcome)
                    else:
                        ready.append(outcome.name)
            if ready:
                batch, ready = ready[: settings.gpu_batch_size], ready[settings.gpu_batch_size :]
                for outcome in upscale_stage(ctx, run_id, batch):
                    if outcome.status == "retry":
                        retry_later(outcome, "upscale")
                    else:
                        finish(outcome)
            elif not pending and not queued:
                retries.wait()
    except BaseException:
        # Do not sit through the queued denoising of an aborted run (Ctrl-C, storage down).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown()
    result = aggregate_stage(ctx, run_id)
    report_stage(ctx, run_id)
    return result
