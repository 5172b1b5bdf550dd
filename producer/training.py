"""``producer train`` in this process: the training job with a progress bar."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import click
from tqdm import tqdm

from workers.io.storage import StorageFactory
from workers.settings import Settings
from workers.training.config import TrainConfig, TrainProgress, TrainResult
from workers.training.setup import make_trainer


def train_here(settings: Settings, dataset: str | None, output: str | None, start: str | None, config: TrainConfig,
               restart: bool, photos: str | None = None) -> TrainResult:
    """Train on this machine's cores (or its GPU), showing loss and held-back PSNR as it goes."""
    trainer = make_trainer(dataset, output, start, config, settings, StorageFactory(settings), restart,
                           note=lambda line: click.echo(line, err=True), photos_url=photos)
    with _stopped_as_interrupt(), tqdm(total=config.step_budget, initial=trainer.step, desc="train", unit="step") as bar:
        def show(progress: TrainProgress) -> None:
            bar.update(progress.step - bar.n)
            best = f"{progress.best_psnr:.2f}" if progress.best_psnr is not None else "-"
            bar.set_postfix_str(f"loss {progress.loss:.4f} held-back {best} dB")

        return trainer.run(show)


@contextlib.contextmanager
def _stopped_as_interrupt() -> Iterator[None]:
    """SIGTERM (a container stopped, ``kill``) ends training as Ctrl-C does: the state is saved, a re-run resumes."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
