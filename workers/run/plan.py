"""What is left of a run, read from storage: the images to denoise, to upscale, and those finished.

Storage is the source of truth: the producer plans from it when a run starts or resumes, and the
recovery sweep plans from it when a run stalls or Redis forgot it.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.io.storage import Storage
from workers.run.keys import ImageState, RunProgress
from workers.run.manifest import RunManifest


@dataclass(frozen=True)
class RunPlan:
    """A saved manifest and what remains: images to denoise, images to upscale."""

    manifest: RunManifest
    to_denoise: tuple[str, ...]
    to_upscale: tuple[str, ...]
    finished: tuple[str, ...]

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def has_work(self) -> bool:
        return bool(self.to_denoise or self.to_upscale)


def plan_remaining(storage: Storage, manifest: RunManifest) -> RunPlan:
    """Every input of ``manifest`` by what storage says it still needs (one listing per stage)."""
    progress = RunProgress.read(storage, manifest.run_id)
    by_state: dict[ImageState, list[str]] = {state: [] for state in ImageState}
    for name in manifest.names:
        by_state[progress.state(name)].append(name)
    return RunPlan(
        manifest,
        to_denoise=tuple(by_state[ImageState.PENDING]),
        to_upscale=tuple(by_state[ImageState.DENOISED]),
        finished=tuple(by_state[ImageState.DONE] + by_state[ImageState.FAILED]),
    )
