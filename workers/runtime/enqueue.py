"""Sending a run's remaining work to the queues: one task per image, by name (so a producer needs no
task code), the aggregation when asked. The producer and the recovery sweep both send through here."""

from __future__ import annotations

from collections.abc import Mapping

from celery import Celery

from workers.run.remaining import RunPlan
from workers.runtime.app import AGGREGATE, DENOISE, UPSCALE


def send_plan(app: Celery, plan: RunPlan, aggregate: bool = False, task_ids: Mapping[str, str] | None = None) -> int:
    """Enqueue every image ``plan`` has left (and the aggregation when ``aggregate``); return how many
    image tasks were sent. ``task_ids``: the task id to send an image's message under (an abandoned
    hold's, which the message's claim then takes over); a fresh one for the others.

    Per-image results are never read (storage holds the outcome, Flower gets events): storing ten
    thousand of them would only fill Redis. A message's flag beats the task's own setting.

    Raises:
        kombu.exceptions.OperationalError: the broker stayed unreachable for the whole publish budget.
    """
    run_id = plan.run_id
    # With denoising fused into the GPU stage, or nothing for the CPU to do, new images skip the CPU queue.
    first_task = UPSCALE if plan.manifest.pipeline.first_stage == "upscale" else DENOISE
    ids = task_ids or {}
    with app.producer_or_acquire() as producer:
        for task, names in ((first_task, plan.to_denoise), (UPSCALE, plan.to_upscale)):
            for name in names:
                app.send_task(task, (run_id, name), producer=producer, ignore_result=True, task_id=ids.get(name))
        if aggregate:
            app.send_task(AGGREGATE, (run_id,), producer=producer)
    return len(plan.to_denoise) + len(plan.to_upscale)
