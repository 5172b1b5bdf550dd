"""What is left of a run, read from storage: the images to denoise, to upscale, and those finished.

Storage is the source of truth: the producer plans from it when a run starts or resumes, and the
recovery sweep plans from it when a run stalls or Redis forgot it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

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

    def only(self, names: Iterable[str]) -> RunPlan:
        """The same plan, limited to the unfinished images ``names`` (what the sweep found lost)."""
        keep = set(names)
        return replace(self, to_denoise=tuple(n for n in self.to_denoise if n in keep),
                       to_upscale=tuple(n for n in self.to_upscale if n in keep))


def plan_remaining(storage: Storage, manifest: RunManifest) -> RunPlan:
    """Every input of ``manifest`` by what storage says it still needs (one listing per stage)."""
    return plan_from(manifest, RunProgress.read(storage, manifest.run_id))


def plan_from(manifest: RunManifest, progress: RunProgress) -> RunPlan:
    """Every input of ``manifest`` by what ``progress`` says it still needs."""
    by_state: dict[ImageState, list[str]] = {state: [] for state in ImageState}
    for name in manifest.names:
        by_state[progress.state(name)].append(name)
    return RunPlan(
        manifest,
        to_denoise=tuple(by_state[ImageState.PENDING]),
        to_upscale=tuple(by_state[ImageState.DENOISED]),
        finished=tuple(by_state[ImageState.DONE] + by_state[ImageState.FAILED]),
    )
