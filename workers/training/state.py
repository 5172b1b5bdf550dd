"""The trainer's saved state (``<output>.state``): one typed record that owns its file.

:class:`TrainState` is everything a re-run needs to go on exactly where a run stopped: the weights,
their moving average, the optimiser, the step, the phase and its budget spent, the held-back scores
of the start and of the best checkpoint, and what defines the run (:class:`RunIdentity`: start
checkpoint, settings, pairs, degradation). What the run learned from beside that (the photo listing)
and the held-back set the scores were measured on are recorded too, so a changed corpus continues the
run, says so, and re-scores what it compares against.

The file is ``torch.save`` of :meth:`TrainState.to_dict` (plain types and tensors: it loads with
``weights_only=True``); version 1 is the untyped dictionary earlier code wrote, still read.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from typing import Any

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.storage import Storage

STATE_VERSION = 2


@dataclass(frozen=True)
class RunIdentity:
    """What makes two invocations one training run: the same start, settings, pairs and degradation.

    The photo listing is left out on purpose: a corpus that gains or loses a photo is the same run.
    ``legacy_data_sha256``: a version-1 state's hash of pairs *and* photos, compared as it was.
    """

    start_sha256: str
    pairs_sha256: str
    config: dict[str, Any]
    forward: dict[str, Any]
    brightness: dict[str, Any]
    legacy_data_sha256: str | None = None

    def same_run(self, other: RunIdentity) -> bool:
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        if self.legacy_data_sha256 is not None or other.legacy_data_sha256 is not None:
            mine.pop("pairs_sha256"), theirs.pop("pairs_sha256")
        return mine == theirs

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "legacy_data_sha256"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunIdentity:
        if "data_sha256" in data:  # version 1
            return cls(
                data["start_sha256"], "", data["config"], data["forward"], data["brightness"], data["data_sha256"]
            )
        return cls(data["start_sha256"], data["pairs_sha256"], data["config"], data["forward"], data["brightness"])


@dataclass(frozen=True)
class Phase:
    """One budget (an invocation's ``--steps``/``--minutes``) and its own schedule."""

    number: int = 1
    start_step: int = 0
    seconds: float = 0.0  # of this phase's time budget spent
    ended: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Phase:
        return cls(int(data["number"]), int(data["start_step"]), float(data["seconds"]), bool(data["ended"]))


@dataclass(frozen=True)
class Scores:
    """One evaluation on the held-back set: mean PSNR over its pairs, its photo crops, and the one that selects."""

    selects: float | None = None
    pairs: float | None = None
    photos: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Scores:
        return cls(**data) if data else cls()


@dataclass(frozen=True)
class TrainState:
    identity: RunIdentity
    step: int
    best_step: int
    best: Scores  # of the checkpoint in the output
    start: Scores  # of the start checkpoint
    history: list[dict[str, Any]]
    seconds: float  # training time of every phase
    phase: Phase
    model: dict[str, Any]
    ema: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any] = field(default_factory=dict)
    photos_sha256: str | None = None  # the photo listing trained on last
    holdout_sha256: str | None = None  # the held-back set ``best`` and ``start`` were measured on
    version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "identity": self.identity.to_dict(),
            "step": self.step,
            "best_step": self.best_step,
            "best": self.best.to_dict(),
            "start": self.start.to_dict(),
            "history": self.history,
            "seconds": self.seconds,
            "phase": self.phase.to_dict(),
            "model": self.model,
            "ema": self.ema,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "photos_sha256": self.photos_sha256,
            "holdout_sha256": self.holdout_sha256,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """Raises KeyError, TypeError or ValueError: not a state this code wrote (the caller names the file)."""
        version = int(data.get("version", 1))
        if version > STATE_VERSION:
            raise ValueError(f"state version {version} is newer than this code's ({STATE_VERSION})")
        if version == 1:
            best, identity, start = Scores(data["best_psnr"]), data["fingerprint"], Scores(data.get("start_psnr"))
            photos_sha256 = holdout_sha256 = None  # version 1 recorded neither
        else:
            best, identity, start = Scores.from_dict(data["best"]), data["identity"], Scores.from_dict(data["start"])
            photos_sha256, holdout_sha256 = data.get("photos_sha256"), data.get("holdout_sha256")
        return cls(
            RunIdentity.from_dict(identity),
            int(data["step"]),
            int(data["best_step"]),
            best,
            start,
            list(data["history"]),
            float(data["seconds"]),
            Phase.from_dict(data["phase"]),
            data["model"],
            data["ema"],
            data["optimizer"],
            data.get("scaler") or {},
            photos_sha256,
            holdout_sha256,
            version=version,
        )

    def save(self, storage: Storage, key: str) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(dataclasses.replace(self, version=STATE_VERSION).to_dict(), buffer)
        storage.put(key, buffer.getvalue())

    @classmethod
    def load(cls, storage: Storage, key: str, device: Any = "cpu") -> TrainState | None:
        """The state at ``key``, or None when there is none.

        Raises:
            ConfigError: the file is corrupt, truncated or not a training state (named, with what to do).
        """
        import torch

        try:
            raw = storage.get(key)
        except ObjectNotFoundError:
            return None
        try:
            return cls.from_dict(torch.load(io.BytesIO(raw), map_location=device, weights_only=True))
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file raises many types
            raise ConfigError(
                f"cannot resume from {storage.url(key)}: it is corrupt or truncated "
                f"({type(exc).__name__}: {exc}); delete it or pass --restart"
            ) from None
