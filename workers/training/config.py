"""A training run's settings and what it reports, with no torch: the producer and the task messages use these."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from workers.errors import ConfigError

DEFAULT_STEPS = 600  # when neither --steps nor --minutes is given


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` and ``minutes`` (the budget) may change when a run is resumed; the rest may not.

    The budget: ``steps`` (optimiser steps in all) and/or ``minutes`` (wall time of this invocation).
    A time budget given alone is the whole budget; with neither, :data:`DEFAULT_STEPS`.
    """

    steps: int | None = None
    minutes: float | None = None  # wall-clock budget for this invocation; the best checkpoint is kept
    seed: int = 0
    batch: int = 8
    crop: int = 32  # input pixels; the target crop is 4x
    lr: float = 1e-4  # measured: benchmarks/finetune_sweep.py (docs/training.md)
    loss: Literal["l1", "charbonnier"] = "charbonnier"
    luma_weight: float = 0.5  # share of the loss on the scored luma (the rest on RGB)
    fresh_share: float = 0.75  # share of each batch's pair crops with a freshly synthesised input
    photo_share: float = 0.5  # share of each batch from clean photos, when there are pairs too
    ema_decay: float = 0.999
    holdout: float = 0.1  # share of the training pairs (and photos) held back for model selection
    holdout_max: int = 16
    holdout_crops: int = 32  # textured crops of held-back photos in the held-back set
    eval_crop: int = 48  # input side of those crops
    eval_every: int = 50
    cache_mb: int = 1024  # decoded pairs and photos kept in memory

    def __post_init__(self) -> None:
        checks = {
            "steps >= 1": self.steps is None or self.steps >= 1, "batch >= 1": self.batch >= 1, "crop >= 4": self.crop >= 4,
            "lr > 0": self.lr > 0, "0 <= luma_weight <= 1": 0 <= self.luma_weight <= 1,
            "0 <= fresh_share <= 1": 0 <= self.fresh_share <= 1, "0 <= photo_share <= 1": 0 <= self.photo_share <= 1,
            "0 <= ema_decay < 1": 0 <= self.ema_decay < 1, "0 <= holdout < 1": 0 <= self.holdout < 1,
            "eval_every >= 1": self.eval_every >= 1, "eval_crop >= 4": self.eval_crop >= 4,
            "holdout_crops >= 0": self.holdout_crops >= 0,
            "minutes > 0": self.minutes is None or self.minutes > 0, "loss l1 or charbonnier": self.loss in ("l1", "charbonnier"),
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ConfigError(f"training settings must satisfy {', '.join(failed)}")

    @property
    def step_budget(self) -> int | None:
        """Steps in all, or None when only the time budget bounds the run."""
        if self.steps is None and self.minutes is None:
            return DEFAULT_STEPS
        return self.steps

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one (everything but the budget and bookkeeping)."""
        data = dataclasses.asdict(self)
        for name in ("steps", "minutes", "eval_every", "cache_mb"):
            del data[name]
        return data


@dataclass
class TrainProgress:
    """What a progress bar shows after each step."""

    step: int
    steps: int | None  # None: bounded by time only
    loss: float
    holdout_psnr: float | None
    best_psnr: float | None
    seconds: float


@dataclass
class TrainResult:
    steps: int  # steps done in all, this invocation and earlier ones
    best_step: int
    best_psnr: float | None  # held-back PSNR of the saved checkpoint (None: no pair held back)
    finished: bool  # True: the budget was used up; False: stopped by a chunk deadline or Ctrl-C (re-run to go on)
    seconds: float  # this invocation
    skipped: list[tuple[str, str]] = field(default_factory=list)
    output: str = ""
    start_psnr: float | None = None  # held-back PSNR of the start checkpoint
    kept_start: bool = False  # no step beat the start on the held-back set: the output is the start's weights
    kept_output: bool = False  # no step beat the model the output already held: it is unchanged
    notes: list[str] = field(default_factory=list)  # what the user should read (a changed corpus, a kept model)
