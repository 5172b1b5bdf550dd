"""A training run's settings and what it reports, with no torch: the producer and the task messages use these."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from workers.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` and ``minutes`` may change when a run is resumed; the rest may not."""

    steps: int = 600
    minutes: float | None = None  # wall-clock budget for this invocation; the best checkpoint is kept
    seed: int = 0
    batch: int = 8
    crop: int = 32  # input pixels; the target crop is 4x
    lr: float = 2e-4
    loss: Literal["l1", "charbonnier"] = "charbonnier"
    luma_weight: float = 0.5  # share of the loss on the scored luma (the rest on RGB)
    fresh_share: float = 0.75  # share of each batch with a freshly synthesised input
    ema_decay: float = 0.999
    holdout: float = 0.1  # share of the training pairs held back for model selection
    holdout_max: int = 16
    eval_every: int = 50
    cache_mb: int = 1024  # decoded pairs kept in memory

    def __post_init__(self) -> None:
        checks = {
            "steps >= 1": self.steps >= 1, "batch >= 1": self.batch >= 1, "crop >= 4": self.crop >= 4,
            "lr > 0": self.lr > 0, "0 <= luma_weight <= 1": 0 <= self.luma_weight <= 1,
            "0 <= fresh_share <= 1": 0 <= self.fresh_share <= 1, "0 <= ema_decay < 1": 0 <= self.ema_decay < 1,
            "0 <= holdout < 1": 0 <= self.holdout < 1, "eval_every >= 1": self.eval_every >= 1,
            "minutes > 0": self.minutes is None or self.minutes > 0, "loss l1 or charbonnier": self.loss in ("l1", "charbonnier"),
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ConfigError(f"training settings must satisfy {', '.join(failed)}")

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one (everything but the length of the run)."""
        data = dataclasses.asdict(self)
        for name in ("steps", "minutes", "eval_every", "cache_mb"):
            del data[name]
        return data


@dataclass
class TrainProgress:
    """What a progress bar shows after each step."""

    step: int
    steps: int
    loss: float
    holdout_psnr: float | None
    best_psnr: float | None
    seconds: float


@dataclass
class TrainResult:
    steps: int  # steps done in all, this invocation and earlier ones
    best_step: int
    best_psnr: float | None  # held-back PSNR of the saved checkpoint (None: no pair held back)
    finished: bool  # False: stopped by the time budget, a chunk deadline or Ctrl-C; re-run to go on
    seconds: float  # this invocation
    skipped: list[tuple[str, str]] = field(default_factory=list)
    output: str = ""
