"""What a training run learns from, resolved: a dataset's pairs and/or a photo folder, and the
degradation (forward model, target brightness) that turns a clean image into an input. No torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.io.storage import Storage
from workers.ops.degrade import BrightnessDistribution, ForwardModel
from workers.training.photos import PhotoListing


@dataclass(frozen=True)
class TrainingData:
    forward: ForwardModel
    brightness: BrightnessDistribution
    dataset: Storage | None = None
    dataset_label: str = ""
    photos: PhotoListing | None = None
    calibration: dict[str, Any] | None = None  # what provenance records about the calibration used
