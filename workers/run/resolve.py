"""From what the user chose on the command line to the run's :class:`PipelineSpec`.

Presets that need a tone curve find the dataset's calibration artifact next to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from workers.io.storage import StorageFactory, split_location
from workers.ops.denoise import DenoiseSpec
from workers.run.manifest import DenoisePlacement, PipelineSpec
from workers.run.presets import NEEDS_CURVE, build_pipeline
from workers.training.calibrate import default_location, load_curve


@dataclass(frozen=True)
class PipelineChoice:
    """What the user asked for on the command line, before the curve is looked up."""

    preset: str
    denoise: DenoiseSpec
    calibration: str | None = None  # artifact path or s3:// URL
    denoise_on: DenoisePlacement = "cpu"  # "gpu": NL-means fused into the GPU task


def resolve_pipeline(choice: PipelineChoice, dataset: str | None, storages: StorageFactory) -> PipelineSpec:
    """The run's pipeline: an explicit artifact is always used; presets that need a curve look for
    ``calibration.json`` at the dataset root."""
    location = choice.calibration
    if location is None and choice.preset in NEEDS_CURVE and dataset is not None:
        candidate = default_location(dataset)
        folder, name = split_location(candidate)
        if storages.open(folder).exists(name):
            location = candidate
    curve = load_curve(location, storages) if location else None
    return dataclasses.replace(build_pipeline(choice.preset, choice.denoise, curve), denoise_on=choice.denoise_on)
