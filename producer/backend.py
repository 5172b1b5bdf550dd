"""Where a command's work runs: in this process (no broker configured, the embedded default) or on the
Celery workers. The commands ask the :class:`Backend` the settings choose instead of branching on
them, as rq's ``Queue(is_async=False)`` runs a job in the calling process through the same path.

Only the broker backend imports Celery, kombu or redis (:mod:`producer.dispatch`), and only when a
command uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from workers.errors import ConfigError
from workers.io.storage import Storage, StorageFactory, is_local
from workers.settings import Settings

if TYPE_CHECKING:
    from producer.planning import RunPlan
    from workers.run.aggregate import AggregateResult
    from workers.run.context import StageContext
    from workers.training.config import TrainConfig, TrainResult


@dataclass(frozen=True)
class TrainRequest:
    """What `producer train` asks for: the dataset and/or photos, where the model starts and goes."""

    dataset: str | None
    output: str | None
    start: str | None
    config: TrainConfig
    restart: bool
    photos: str | None


class InProcess:
    """Everything here: the stages in this process, the local or remote store opened directly."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, ctx: StageContext, plan: RunPlan, wait: bool = True) -> AggregateResult | None:
        """Process what ``plan`` has left, then aggregate (``wait`` is moot: this process does the work)."""
        from producer.embedded import run_embedded

        return run_embedded(ctx, plan)

    def progress_lines(self, run_id: str) -> list[str]:
        """What the broker knows of a run in progress: nothing, with no broker."""
        return []

    def aggregate(self, run_id: str, partial: bool) -> dict[str, Any]:
        from workers.run.aggregate import aggregate_stage
        from workers.run.context import StageContext

        return aggregate_stage(StageContext(self.settings), run_id, allow_partial=partial).as_dict()

    def cancel(self, storage: Storage, run_id: str, total: int) -> None:
        raise ConfigError("no broker configured: an in-process run stops with Ctrl-C and resumes when re-run")

    def calibrate(self, dataset: str, output: str | None) -> tuple[list[str], int, str]:
        """(summary lines, pairs, where the artifact went)."""
        from workers.training.calibrate import calibrate_here

        calibration, where = calibrate_here(dataset, output, StorageFactory(self.settings))
        return calibration.summary(), calibration.n_pairs, where

    def train(self, job: TrainRequest) -> TrainResult:
        from producer.training import train_here

        return train_here(self.settings, job.dataset, job.output, job.start, job.config, job.restart, job.photos)


class Workers(InProcess):
    """The Celery workers: runs, aggregations and cancels through the broker; calibration and training
    of a dataset in object storage too (a local dataset is calibrated and trained here: no worker can
    read this machine's files)."""

    def run(self, ctx: StageContext, plan: RunPlan, wait: bool = True) -> AggregateResult | None:
        """Enqueue the plan; follow the run to its end when ``wait``."""
        from producer import dispatch

        tracker = dispatch.connect_tracker(self.settings)
        dispatch.enqueue_plan(self.settings, ctx.storage, plan, tracker)
        click.echo(f"enqueued run {plan.run_id}")
        return dispatch.wait_for_run(self.settings, ctx.storage, plan, tracker) if wait else None

    def progress_lines(self, run_id: str) -> list[str]:
        from producer import dispatch

        return dispatch.progress_lines(self.settings, run_id)

    def aggregate(self, run_id: str, partial: bool) -> dict[str, Any]:
        from producer import dispatch

        return dispatch.aggregate(self.settings, run_id, partial)

    def cancel(self, storage: Storage, run_id: str, total: int) -> None:
        from producer import dispatch

        dispatch.cancel(self.settings, storage, run_id, total)

    def calibrate(self, dataset: str, output: str | None) -> tuple[list[str], int, str]:
        if is_local(dataset):
            return super().calibrate(dataset, output)
        from producer import dispatch

        result = dispatch.calibrate(self.settings, dataset, output)
        return result["summary"], result["pairs"], result["location"]

    def train(self, job: TrainRequest) -> TrainResult:
        if job.dataset is None or is_local(job.dataset):
            return super().train(job)
        from producer import dispatch

        return dispatch.train(self.settings, job.dataset, job.output, job.start, job.config, job.restart, job.photos)


def backend_for(settings: Settings) -> InProcess:
    """The embedded default when no broker is configured, else the workers."""
    return InProcess(settings) if settings.embedded else Workers(settings)
