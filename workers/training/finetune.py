"""Fine-tune a 4x model on a dataset's training pairs: fresh degradations, EMA, model selection, resume.

Each step takes ``batch`` random crops (``crop`` input pixels square, the target 4x that) of random
training pairs, with a random flip/rotation. The first ``fresh_share`` of the crops get a brand-new
input synthesised from the target crop with the calibrated forward model, so the model never sees
the same noise twice; the rest keep the pair's real input. Loss: L1 or Charbonnier, blended with the
same loss on the luma the competition scores (``luma_weight``). Adam with a cosine schedule (over
the steps, or over the time budget when that is shorter), and an exponential moving average of the
weights with warm-up; the EMA weights are what is evaluated and saved.

A held-back slice of the training pairs (never val/ or test/) is scored every ``eval_every`` steps
with the competition's PSNR; the best EMA weights so far are the output checkpoint. The batch of
step ``s`` depends only on ``(seed, s)``: a resumed run sees exactly the batches an uninterrupted
one would. Decoded pairs are kept in a bounded LRU cache, so memory does not grow with the dataset.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.errors import ConfigError, ObjectNotFoundError, PermanentImageError
from workers.io.storage import Storage
from workers.io.submission import grey_subsample
from workers.io.weights import file_sha256
from workers.ops.degrade import ForwardModel
from workers.ops.metrics import psnr
from workers.ops.upscale import Upscaler, load_descriptor, resolve_device
from workers.ops.upscalers import TilePolicy
from workers.settings import code_version
from workers.training.artifacts import PROVENANCE_KIND, TrainingOutput
from workers.training.config import TrainConfig, TrainProgress, TrainResult
from workers.training.pairs import PairKeys, load_pair, training_pairs

logger = logging.getLogger(__name__)

LUMA = (0.299, 0.587, 0.114)  # Pillow's convert("L"), what the competition scores
CHARBONNIER_EPS = 1e-3
MAX_BAD_STEPS = 20  # consecutive non-finite losses before training gives up


class PairCache:
    """Decoded (input, target) pairs by index, least recently used dropped past ``max_bytes``."""

    def __init__(self, dataset: Storage, pairs: Sequence[PairKeys], max_bytes: int) -> None:
        self.dataset, self.pairs, self.max_bytes = dataset, pairs, max_bytes
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._bytes = 0

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raises PermanentImageError for a bad pair (the caller drops it)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        pair = load_pair(self.dataset, self.pairs[index])
        self._cache[index] = pair
        self._bytes += pair[0].nbytes + pair[1].nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, (old_in, old_target) = self._cache.popitem(last=False)
            self._bytes -= old_in.nbytes + old_target.nbytes
        return pair


def split_holdout(pairs: Sequence[PairKeys], share: float, most: int) -> tuple[list[PairKeys], list[PairKeys]]:
    """(training, held back): a fixed slice chosen by hashing the file names, so it never moves."""
    if len(pairs) < 2 or share <= 0:
        return list(pairs), []
    count = max(1, min(most, round(share * len(pairs))))
    ranked = sorted(pairs, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())
    held = {p.name for p in ranked[:count]}
    return [p for p in pairs if p.name not in held], [p for p in pairs if p.name in held]


def dihedral(image: np.ndarray, transform: int) -> np.ndarray:
    """One of the 8 flips/rotations of an H x W x C array (0 is the identity)."""
    out = np.rot90(image, transform % 4)
    return np.ascontiguousarray(out[:, ::-1] if transform >= 4 else out)


def make_batch(cache: PairCache, indices: Sequence[int], config: TrainConfig, forward: ForwardModel,
               step: int, bad: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """The (inputs, targets) uint8 batch of ``step``: a pure function of ``(seed, step)`` and the data.

    A pair that fails to load joins ``bad`` and another pair is drawn in its place.
    """
    rng = np.random.default_rng((config.seed, step))
    fresh = round(config.fresh_share * config.batch)
    chosen: list[tuple[np.ndarray, np.ndarray]] = []
    while len(chosen) < config.batch:
        live = [i for i in indices if i not in bad]
        if not live:
            raise ConfigError("no readable training pair left")
        index = live[int(rng.integers(len(live)))]
        try:
            chosen.append(cache.get(index))
        except PermanentImageError as exc:
            logger.warning("training skips %s: %s", exc.name, exc.reason)
            bad.add(index)
    crop = min(config.crop, *(min(inp.shape[:2]) for inp, _ in chosen))
    inputs, targets = [], []
    for i, (inp, target) in enumerate(chosen):
        y = int(rng.integers(inp.shape[0] - crop + 1))
        x = int(rng.integers(inp.shape[1] - crop + 1))
        hr = target[4 * y : 4 * (y + crop), 4 * x : 4 * (x + crop)]
        lr = forward.degrade(hr, rng) if i < fresh else inp[y : y + crop, x : x + crop]
        transform = int(rng.integers(8))
        inputs.append(dihedral(lr, transform))
        targets.append(dihedral(hr, transform))
    return np.stack(inputs), np.stack(targets)


def _loss(pred: torch.Tensor, target: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if config.loss == "l1":
            return (a - b).abs().mean()
        return torch.sqrt((a - b) ** 2 + CHARBONNIER_EPS**2).mean()

    luma = pred.new_tensor(LUMA).view(1, 3, 1, 1)
    rgb = distance(pred, target)
    if config.luma_weight == 0:
        return rgb
    y_pred, y_true = (pred * luma).sum(1), (target * luma).sum(1)
    return (1 - config.luma_weight) * rgb + config.luma_weight * distance(y_pred, y_true)


def _to_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _amp_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Mixed precision on CUDA: bf16 where the card has it, else fp16 (with a gradient scaler)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Trainer:
    """One training run over a dataset, writing to one :class:`TrainingOutput`. Not thread-safe."""

    def __init__(self, dataset: Storage, output: TrainingOutput, start: Path, start_source: str,
                 forward: ForwardModel, config: TrainConfig, device: str = "auto", precision: str = "auto",
                 calibration: dict[str, Any] | None = None, dataset_label: str = "", restart: bool = False) -> None:
        self.dataset, self.output, self.config, self.forward = dataset, output, config, forward
        listing = training_pairs(dataset, dataset_label)
        self.skipped = list(listing.skipped)
        self.train_pairs, self.holdout_pairs = split_holdout(listing.pairs, config.holdout, config.holdout_max)
        self.pairs_sha256 = hashlib.sha256("\n".join(p.name for p in listing.pairs).encode()).hexdigest()
        self.start_source, self.start_sha256 = start_source, file_sha256(start)
        self.calibration = calibration or {"forward_model": forward.to_dict()}
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)  # fp32 on every core
        self.amp = _amp_dtype(self.device, precision)
        torch.manual_seed(config.seed)
        self.descriptor = load_descriptor(start)
        self.model = self.descriptor.model.float().to(self.device).train()
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.ema_descriptor = copy.deepcopy(self.descriptor)
        self.ema = self.ema_descriptor.model.eval()
        self.ema.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp is torch.float16)
        self.cache = PairCache(dataset, self.train_pairs, config.cache_mb * 1024 * 1024)
        self.holdout_cache = PairCache(dataset, self.holdout_pairs, config.cache_mb * 1024 * 1024)
        self.bad: set[int] = set()
        self.step, self.best_psnr, self.best_step = 0, None, 0
        self.history: list[dict[str, Any]] = []
        self.seconds_before = 0.0
        self._budget_spent = 0.0
        if not restart:
            self._resume()

    # -- state -------------------------------------------------------------------------------------

    def _fingerprint(self) -> dict[str, Any]:
        return {"start_sha256": self.start_sha256, "pairs_sha256": self.pairs_sha256,
                "config": self.config.fingerprint(), "forward": self.forward.to_dict()}

    def _resume(self) -> None:
        """Pick up a saved state of the same run; a state of another run is left alone (overwritten)."""
        try:
            raw = self.output.storage.get(self.output.state)
        except ObjectNotFoundError:
            return
        try:
            state = torch.load(io.BytesIO(raw), map_location=self.device, weights_only=True)
            if state.get("fingerprint") != self._fingerprint():
                logger.warning("%s belongs to another training run (other start, pairs or settings): starting afresh",
                               self.output.storage.url(self.output.state))
                return
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file raises many types
            raise ConfigError(f"cannot resume from {self.output.storage.url(self.output.state)}: it is corrupt or "
                              f"truncated ({type(exc).__name__}: {exc}); delete it or pass --restart") from None
        self.step, self.best_psnr, self.best_step = int(state["step"]), state["best_psnr"], int(state["best_step"])
        self.history, self.seconds_before = list(state["history"]), float(state["seconds"])
        logger.info("resuming training at step %d (best held-back PSNR %s)", self.step, self.best_psnr)

    def _save_state(self, seconds: float) -> None:
        buffer = io.BytesIO()
        torch.save({"fingerprint": self._fingerprint(), "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                    "step": self.step, "best_psnr": self.best_psnr, "best_step": self.best_step,
                    "history": self.history, "seconds": self.seconds_before + seconds}, buffer)
        self.output.storage.put(self.output.state, buffer.getvalue())

    def _save_checkpoint(self) -> None:
        from safetensors.torch import save

        weights = {k: v.detach().float().cpu().contiguous() for k, v in self.ema.state_dict().items()}
        # One metadata key only: safetensors writes a map of them in a random order, and the same
        # weights must give the same bytes (hash-addressed models, reproducible runs).
        self.output.storage.put(self.output.name, save(weights, metadata={"format": "pt"}))

    def provenance(self, finished: bool, seconds: float) -> dict[str, Any]:
        return {
            "kind": PROVENANCE_KIND, "version": 1,
            "start": {"source": self.start_source, "sha256": self.start_sha256,
                      "architecture": self.descriptor.architecture.name},
            "pairs": {"train": len(self.train_pairs), "holdout": [p.name for p in self.holdout_pairs],
                      "names_sha256": self.pairs_sha256, "skipped": [{"file": f, "reason": r} for f, r in self.skipped]},
            "calibration": self.calibration, "config": dataclasses.asdict(self.config),
            "seed": self.config.seed, "steps": self.step, "best_step": self.best_step,
            "holdout_psnr": self.best_psnr, "loss": self.history[-1]["loss"] if self.history else None,
            "curve": self.history, "device": str(self.device), "precision": str(self.amp or torch.float32),
            "seconds": round(self.seconds_before + seconds, 1), "finished": finished,
            "code_version": code_version(), "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _write_provenance(self, finished: bool, seconds: float) -> None:
        self.output.storage.put(self.output.provenance, json.dumps(self.provenance(finished, seconds), indent=1).encode())

    # -- the loop ----------------------------------------------------------------------------------

    def evaluate(self) -> float | None:
        """Competition PSNR of the EMA model on the held-back pairs (None when none is held back)."""
        if not self.holdout_pairs:
            return None
        upscaler = Upscaler(self.ema_descriptor, self.device, torch.float32, TilePolicy())
        scores = []
        for index in range(len(self.holdout_pairs)):
            try:
                inp, target = self.holdout_cache.get(index)
            except PermanentImageError as exc:
                logger.warning("held-back pair skipped: %s", exc)
                continue
            output = upscaler.upscale(inp[None])[0]
            scores.append(psnr(grey_subsample(output), grey_subsample(target)))
        return float(np.mean(scores)) if scores else None

    def _learning_rate(self, started: float) -> float:
        progress = self.step / self.config.steps
        if self.config.minutes:
            spent = self._budget_spent + time.monotonic() - started
            progress = max(progress, spent / (60 * self.config.minutes))
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _train_step(self, started: float) -> float:
        inputs, targets = make_batch(self.cache, range(len(self.train_pairs)), self.config, self.forward, self.step, self.bad)
        x, y = _to_tensor(inputs, self.device), _to_tensor(targets, self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate(started)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = _loss(self.model(x).float(), y, self.config)
        if not torch.isfinite(loss):
            return math.nan
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))  # warm-up for short runs
        with torch.no_grad():
            for ema_p, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                ema_p.mul_(decay).add_(p.detach(), alpha=1 - decay)
            for ema_b, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                ema_b.copy_(b)
        return float(loss.detach())

    def run(self, on_progress: Callable[[TrainProgress], None] | None = None,
            should_stop: Callable[[], bool] | None = None, budget_spent_s: float = 0.0) -> TrainResult:
        """Train until ``steps`` are done, the time budget is spent, or ``should_stop()`` says so.

        ``budget_spent_s``: seconds of the ``minutes`` budget earlier chunks of the same job used (the
        schedule and the deadline count them). Ctrl-C saves the state (and keeps the best
        checkpoint), then re-raises: re-running resumes.
        """
        started = time.monotonic()
        self._budget_spent = budget_spent_s
        deadline = started + 60 * self.config.minutes - budget_spent_s if self.config.minutes else math.inf
        losses: list[float] = []
        bad_in_a_row = 0
        finished = self.step >= self.config.steps
        try:
            while not finished:
                if time.monotonic() >= deadline or (should_stop is not None and should_stop()):
                    break
                loss = self._train_step(started)
                if math.isnan(loss):
                    bad_in_a_row += 1
                    logger.warning("step %d: non-finite loss, step skipped", self.step)
                    if bad_in_a_row > MAX_BAD_STEPS:
                        raise ConfigError(f"{MAX_BAD_STEPS} non-finite losses in a row: lower --lr or check the data")
                    continue
                bad_in_a_row = 0
                self.step += 1
                losses.append(loss)
                finished = self.step >= self.config.steps
                scored = None
                if finished or self.step % self.config.eval_every == 0:
                    scored = self._checkpoint(losses, started)
                    losses = []
                if on_progress is not None:
                    on_progress(TrainProgress(self.step, self.config.steps, loss, scored, self.best_psnr,
                                              time.monotonic() - started))
        except KeyboardInterrupt:
            self._save_state(time.monotonic() - started)
            raise
        if losses:  # stopped between evaluations: evaluate what was learned since
            self._checkpoint(losses, started)
        seconds = time.monotonic() - started
        self._save_state(seconds)
        self._write_provenance(finished, seconds)
        return TrainResult(self.step, self.best_step, self.best_psnr, finished, seconds, self.skipped, self.output.url())

    def _checkpoint(self, losses: list[float], started: float) -> float | None:
        """Evaluate, keep the weights if they are the best so far, save the state."""
        scored = self.evaluate()
        seconds = time.monotonic() - started
        self.history.append({"step": self.step, "loss": round(float(np.mean(losses)), 6) if losses else None,
                             "holdout_psnr": round(scored, 4) if scored is not None else None,
                             "seconds": round(self.seconds_before + seconds, 1)})
        if scored is None or self.best_psnr is None or scored > self.best_psnr:
            self.best_psnr, self.best_step = scored, self.step
            self._save_checkpoint()
        self._save_state(seconds)
        self._write_provenance(False, seconds)
        return scored
