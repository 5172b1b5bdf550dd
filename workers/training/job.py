"""One training job: what ``producer train`` asks for (:class:`TrainJob`, also the ``train`` task's
message), run in process (:func:`run_training`) or on the workers in chunks
(:mod:`workers.training.chunks`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.errors import ConfigError
from workers.io.storage import StorageFactory
from workers.settings import Settings
from workers.training.artifacts import TRAINED_FILE, default_output
from workers.training.calibrate import (
    CALIBRATION_FILE,
    default_location,
)
from workers.training.config import TrainConfig, TrainProgress, TrainResult
from workers.training.destinations import check_task_dataset, check_task_output, check_task_start
from workers.training.setup import make_trainer

logger = logging.getLogger(__name__)


def run_training(dataset_url: str | None, output_url: str | None, start_ref: str | None, config: TrainConfig,
                 settings: Settings, storages: StorageFactory, restart: bool = False,
                 on_progress: Callable[[TrainProgress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 note: Callable[[str], None] = logger.info, photos_url: str | None = None) -> TrainResult:
    """Train and return what happened (see :meth:`Trainer.run`)."""
    trainer = make_trainer(dataset_url, output_url, start_ref, config, settings, storages, restart, note, photos_url)
    return trainer.run(on_progress, should_stop)


@dataclass(frozen=True)
class TrainJob:
    """A distributed training job, as the ``train`` task's message carries it (JSON, no pixels)."""

    dataset: str
    output: str | None = None
    start: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    restart: bool = False
    started_at: float = 0.0  # epoch seconds when the producer enqueued it: the --minutes budget counts from here
    chunk: int = 0
    photos: str | None = None  # a photo folder to learn from too (default: the dataset's photos/)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"malformed training job: {exc}") from None

    def output_location(self) -> str:
        return self.output or default_output(self.dataset)

    def checked(self, settings: Settings | None = None) -> TrainJob:
        """This job, if a task may run it (:mod:`workers.training.destinations`): its dataset inside
        the run store, its checkpoint (and the companions beside it) the dataset's
        ``trained_x4.safetensors`` or allow-listed, the dataset's ``calibration.json`` (made when
        missing), and a start a task may use. ``settings``: this process's, by default.

        Raises:
            ConfigError: something it would read or write is not allowed.
        """
        settings = settings or Settings.from_env()
        check_task_dataset(self.dataset, settings)
        check_task_output(self.output_location(), self.dataset, TRAINED_FILE, settings)
        check_task_output(default_location(self.dataset), self.dataset, CALIBRATION_FILE, settings)
        check_task_start(self.start, settings)
        return self
