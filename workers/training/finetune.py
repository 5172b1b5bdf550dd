"""Train a 4x model on a dataset's training pairs and/or clean photos: fresh degradations, EMA,
model selection that means something, resume, and budgets that do what they say.

Batches come from :mod:`workers.training.batches` (pair crops and photo crops, every one with fresh
noise from the forward model, or the pair's real input). Loss: L1 or Charbonnier, blended with the
same loss on the luma the competition scores (``luma_weight``). Adam with a cosine schedule over the
budget, and an exponential moving average of the weights with warm-up; the EMA weights are what is
evaluated and saved.

The held-back set (:mod:`workers.training.holdout`: whole scenes of pairs and crops of photos, never
trained on) scores the start checkpoint first, then the EMA every ``eval_every`` steps; the output is
the best so far by :func:`~workers.training.holdout.improves` (higher on the pairs, no loss on the
photos), so a fine-tune that never beats its start keeps the start. An output that is already there
(a run trained earlier, of another start or data) is scored too, and only a checkpoint that beats it
on the same held-back set replaces it.

Budgets run in *phases*. A phase is one budget (``--steps`` in all and/or ``--minutes`` of this
invocation) with its own cosine schedule. Re-running an interrupted phase (Ctrl-C, a chunk
deadline) resumes it exactly: the batch of step ``s`` depends only on ``(seed, s)``. Re-running
after a phase used its budget up starts a new phase from where it ended, at the full learning rate
again (a warm restart): training longer actually trains. What makes a run the same run is its start,
settings, pairs and degradation (:class:`~workers.training.state.RunIdentity`), not the photo listing:
a corpus that gained or lost a photo continues the run (and says so), and a changed held-back set
re-scores the start and the output before anything is compared with them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.errors import ConfigError, ObjectNotFoundError, UnsupportedModelError
from workers.io.inflight import Prefetcher
from workers.io.weights import file_sha256
from workers.ops.agreement import descriptor_agreement
from workers.ops.device import Bf16Agreement, CpuCapabilities, agreement_in, choose_precision
from workers.ops.upscale import Upscaler, cuda_has_bf16, descriptor_from_safetensors, load_descriptor, resolve_device
from workers.ops.upscalers import TilePolicy
from workers.settings import code_version
from workers.training.artifacts import Provenance, TrainingOutput, sha256_hex
from workers.training.batches import BatchSource, PairCache, make_batch
from workers.training.config import TrainConfig, TrainProgress, TrainResult
from workers.training.data import TrainingData
from workers.training.holdout import (
    MIN_HOLDOUT_PAIRS,
    PHOTO_LOSS_TOLERANCE_DB,
    HoldoutScore,
    HoldoutSet,
    held_pairs,
    held_photo_crops,
    improves,
)
from workers.training.pairs import SCALE, load_pair, training_pairs
from workers.training.photos import PhotoCache, split_photos
from workers.training.scenes import read_scenes, split_by_scene
from workers.training.state import Phase, RunIdentity, Scores, TrainState

logger = logging.getLogger(__name__)

LUMA = (0.299, 0.587, 0.114)  # Pillow's convert("L"), what the competition scores
CHARBONNIER_EPS = 1e-3
MAX_BAD_STEPS = 20  # consecutive non-finite losses before training gives up
START, PREVIOUS_OUTPUT, TRAINED = "start", "previous output", "trained"  # where the best checkpoint came from


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


def _pinned(batch: np.ndarray, pin: bool) -> torch.Tensor:
    tensor = torch.from_numpy(batch)
    return tensor.pin_memory() if pin else tensor


def _to_tensor(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


class _LossLog:
    """The losses read since the last evaluation; a run of non-finite ones (each step's update was
    skipped) longer than MAX_BAD_STEPS stops training with a clear error."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.bad_in_a_row = 0

    def account(self, reading: _LateLoss) -> float:
        value = reading.value()
        if math.isfinite(value):
            self.bad_in_a_row = 0
            self.losses.append(value)
            return value
        self.bad_in_a_row += 1
        logger.warning("step %d: non-finite loss, its update was skipped", reading.step)
        if self.bad_in_a_row > MAX_BAD_STEPS:
            raise ConfigError(f"{MAX_BAD_STEPS} non-finite losses in a row: lower --lr or check the data")
        return value

    def take(self) -> list[float]:
        """The losses since the last call (for the evaluation that averages them)."""
        taken, self.losses = self.losses, []
        return taken


class _LateLoss:
    """A step's loss, copied to the host without waiting for the device; :meth:`value` waits only for
    that step, not for the ones queued after it."""

    def __init__(self, step: int, loss: torch.Tensor) -> None:
        self.step = step
        self._event = None
        if loss.device.type == "cuda":
            self._host = loss.to("cpu", non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = loss

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def value(self) -> float:
        if self._event is not None:
            self._event.synchronize()
        return float(self._host)


def cpu_threads() -> int:
    """``OMP_NUM_THREADS`` when set (several trainings sharing cores), else every core this process may use."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    return int(configured) if configured.isdigit() and int(configured) > 0 else len(os.sched_getaffinity(0))


def training_precision(device: torch.device, precision: str) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, why): :func:`workers.ops.device.choose_precision` for training."""
    choice = choose_precision(precision, device.type, CpuCapabilities.detect(), cuda_bf16=cuda_has_bf16(device),
                              purpose="training")
    return (None if choice.dtype == "fp32" else choice.torch_dtype()), choice.reason


class Trainer:
    """One training run, writing to one :class:`TrainingOutput`. Not thread-safe."""

    def __init__(self, data: TrainingData, output: TrainingOutput, start: Path, start_source: str, config: TrainConfig,
                 device: str = "auto", precision: str = "auto", restart: bool = False,
                 host_checks: bool | None = None) -> None:
        if data.dataset is None and data.photos is None:
            raise ConfigError("nothing to train on: give a dataset with train/ pairs, or photos (--photos)")
        self.data, self.output, self.config, self.forward = data, output, config, data.forward
        self.start_path, self.start_source, self.start_sha256 = start, start_source, file_sha256(start)
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        self.amp, self.precision_reason = training_precision(self.device, precision)
        self.channels_last = self.device.type == "cuda" or self.amp is not None
        torch.manual_seed(config.seed)
        self.descriptor = load_descriptor(start)
        self.model = self.descriptor.model.float().to(self.device).train()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema_descriptor = copy.deepcopy(self.descriptor)
        self.ema = self.ema_descriptor.model.eval()
        self.ema.requires_grad_(False)
        # On CUDA nothing reads the loss on the host each step (see _train_step): the fused optimizer
        # takes the skip decision on the device. A CPU keeps the host check and the plain optimizer
        # (the bit-for-bit resume is promised there).
        self.host_checks = self.device.type != "cuda" if host_checks is None else host_checks
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=not self.host_checks or None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp is torch.float16 and self.device.type == "cuda")
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[str] = []  # what a user should read about this run (a changed corpus, a kept output)
        self.source, self.holdout, self.pair_names, self.held_scenes = self._prepare_data()
        self.step, self.best_step, self.best_origin = 0, 0, START
        self.best, self.start = Scores(), Scores()
        self.scored = False  # the start (and any earlier output) has been scored on this held-back set
        self.history: list[dict[str, Any]] = []
        self.seconds_before = 0.0  # all phases, for provenance
        self.phase = Phase()
        self.agreement: Bf16Agreement | None = None
        if not restart:
            self._resume()
        if self.phase.ended:
            self._new_phase()

    @property
    def best_psnr(self) -> float | None:
        return self.best.selects

    @property
    def start_psnr(self) -> float | None:
        return self.start.selects

    def _note(self, line: str) -> None:
        logger.warning("%s", line)
        self.notes.append(line)

    # -- data --------------------------------------------------------------------------------------

    def _prepare_data(self) -> tuple[BatchSource, HoldoutSet, list[str], tuple[str, ...]]:
        config, data = self.config, self.data
        cache_bytes = config.cache_mb * 1024 * 1024
        source = BatchSource(data.forward, data.brightness)
        holdout = HoldoutSet([])
        pair_names: list[str] = []
        held_scenes: tuple[str, ...] = ()
        if data.dataset is not None:
            listing = training_pairs(data.dataset, data.dataset_label)
            self.skipped += listing.skipped
            pair_names = [p.name for p in listing.pairs]
            split = split_by_scene(listing.pairs, read_scenes(data.dataset), config.holdout, config.holdout_max,
                                   MIN_HOLDOUT_PAIRS)
            train, held, held_scenes = split.train, split.held, split.held_scenes
            if split.declared:
                logger.info("held back %d pairs of %d of the dataset's %d scenes", len(held), len(held_scenes),
                            split.scenes)
            source.pairs, source.pair_indices = PairCache(data.dataset, train, cache_bytes), range(len(train))
            holdout.items += held_pairs(lambda i: load_pair(data.dataset, held[i]), [p.name for p in held],  # type: ignore[arg-type]
                                        len(held), holdout.skipped)
        if data.photos is not None:
            train_photos, held_photos = split_photos(data.photos, config.holdout, config.holdout_max)
            source.photos = PhotoCache(data.photos, train_photos, SCALE * config.crop, cache_bytes // 2)
            if held_photos and config.holdout_crops:
                eval_cache = PhotoCache(data.photos, held_photos, SCALE * config.eval_crop, cache_bytes // 4)
                holdout.items += held_photo_crops(eval_cache, config.holdout_crops, config.eval_crop,
                                                  data.forward, data.brightness)
                self.skipped += [(k, r) for k, r in eval_cache.skipped.items()]
            if not source.photos.live:
                raise ConfigError(f"no usable photo in {data.photos.label}")
        self.skipped += holdout.skipped
        return source, holdout, pair_names, held_scenes

    # -- state -------------------------------------------------------------------------------------

    def _identity(self, legacy: bool = False) -> RunIdentity:
        pairs = hashlib.sha256("\n".join(self.pair_names).encode()).hexdigest()
        legacy_data = None
        if legacy:  # how a version-1 state hashed pairs and photos together
            listing = "\n".join(self.pair_names) + "\n--photos--\n" + (self.data.photos.names_sha256 if self.data.photos else "")
            legacy_data = hashlib.sha256(listing.encode()).hexdigest()
        return RunIdentity(self.start_sha256, pairs, self.config.fingerprint(), self.forward.to_dict(),
                           self.data.brightness.to_dict(), legacy_data)

    @property
    def _photos_sha256(self) -> str | None:
        return self.data.photos.names_sha256 if self.data.photos else None

    def _resume(self) -> None:
        """Pick up a saved state of the same run; a state of another run is left alone (overwritten)."""
        key = self.output.state
        state = TrainState.load(self.output.storage, key, self.device)
        if state is None:
            return
        if not state.identity.same_run(self._identity(legacy=state.identity.legacy_data_sha256 is not None)):
            logger.warning("%s belongs to another training run (other start, pairs or settings): starting afresh; "
                           "the model already at %s is kept unless a checkpoint beats it",
                           self.output.storage.url(key), self.output.url())
            return
        try:
            self.model.load_state_dict(state.model)
            self.ema.load_state_dict(state.ema)
            self.optimizer.load_state_dict(state.optimizer)
            if state.scaler:
                self.scaler.load_state_dict(state.scaler)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot resume from {self.output.storage.url(key)}: it does not fit this model "
                              f"({type(exc).__name__}: {exc}); delete it or pass --restart") from None
        self.step, self.best_step, self.best, self.start = state.step, state.best_step, state.best, state.start
        self.best_origin = START if state.best_step == 0 else TRAINED
        self.history, self.seconds_before, self.phase = list(state.history), state.seconds, state.phase
        self.scored = state.holdout_sha256 == self.holdout.identity() and self.start.selects is not None
        if state.photos_sha256 is not None and state.photos_sha256 != self._photos_sha256:
            self._note(f"the photos changed since step {state.step} ({len(self.data.photos.keys) if self.data.photos else 0}"
                       " now): training goes on with them")
        if not self.scored and state.holdout_sha256 is not None:
            self._note("the held-back set changed: the start and the model in the output are scored on it again")
        logger.info("resuming training at step %d (phase %d; best held-back PSNR %s)", self.step, self.phase.number,
                    self.best.selects)

    def _new_phase(self) -> None:
        """The last budget was used up: this invocation's budget is a new phase with its own schedule."""
        budget = self.config.step_budget
        if budget is not None and self.step >= budget and not self.config.minutes:
            return  # --steps already reached and no time given: nothing more was asked for
        self.phase = Phase(self.phase.number + 1, self.step, 0.0, False)
        logger.info("the previous budget was used up: phase %d starts at step %d with a fresh schedule",
                    self.phase.number, self.step)

    def _save_state(self, seconds: float) -> None:
        TrainState(self._identity(), self.step, self.best_step, self.best, self.start, self.history,
                   self.seconds_before + seconds, dataclasses.replace(self.phase, seconds=self.phase.seconds + seconds),
                   self.model.state_dict(), self.ema.state_dict(), self.optimizer.state_dict(),
                   self.scaler.state_dict() if self.scaler.is_enabled() else {}, self._photos_sha256,
                   self.holdout.identity() if self.scored else None).save(self.output.storage, self.output.state)

    def _save_checkpoint(self, descriptor: Any = None) -> None:
        from safetensors.torch import save

        model = (descriptor.model if descriptor is not None else self.ema)
        weights = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        # One metadata key only: safetensors writes a map of them in a random order, and the same
        # weights must give the same bytes (hash-addressed models, reproducible runs).
        self.output.storage.put(self.output.name, save(weights, metadata={"format": "pt"}))

    def _output_descriptor(self) -> tuple[Any, str] | None:
        """The model already in the output (descriptor, sha256), if there is one spandrel loads."""
        try:
            data = self.output.storage.get(self.output.name)
        except ObjectNotFoundError:
            return None
        try:
            return descriptor_from_safetensors(data, self.output.url()), sha256_hex(data)
        except UnsupportedModelError as exc:
            self._note(f"the file already at {self.output.url()} is not a model this trainer can score ({exc}): "
                       "it will be replaced")
            return None

    def provenance(self, finished: bool, seconds: float) -> Provenance:
        photos = self.data.photos
        cache = self.source.photos
        return Provenance(
            start={"source": self.start_source, "sha256": self.start_sha256,
                   "architecture": self.descriptor.architecture.name, "holdout_psnr": self.start.selects},
            pairs={"train": len(self.source.pair_indices), "names_sha256": hashlib.sha256(
                "\n".join(self.pair_names).encode()).hexdigest() if self.pair_names else None,
                "held_back_scenes": list(self.held_scenes),
                "skipped": [{"file": f, "reason": r} for f, r in self.skipped]},
            photos=None if photos is None else {
                "folder": photos.label, "count": len(photos.keys), "train": len(cache.indices) if cache else 0,
                "names_sha256": photos.names_sha256, "corpus_manifest_sha256": photos.manifest_sha256,
                "skipped": [{"file": f, "reason": r} for f, r in (cache.skipped.items() if cache else [])]},
            holdout={**self.holdout.describe(), "selects_on": "pairs" if self.holdout.pairs_decide else "every item"},
            calibration=self.data.calibration or {"forward_model": self.forward.to_dict()},
            brightness=self.data.brightness.to_dict(), config=dataclasses.asdict(self.config), seed=self.config.seed,
            steps=self.step, best_step=self.best_step, holdout_psnr=self.best.selects,
            kept_start=self.best_origin == START and self.start.selects is not None,
            loss=next((h["loss"] for h in reversed(self.history) if h.get("loss") is not None), None),
            curve=self.history, phase=self.phase.number, device=str(self.device), hardware=_hardware(self.device),
            precision=str(self.amp or torch.float32), torch=torch.__version__,
            seconds=round(self.seconds_before + seconds, 1), finished=finished, code_version=code_version(),
            at=datetime.now(UTC).isoformat(timespec="seconds"), precision_reason=self.precision_reason,
            selection={"start": self.start.to_dict(), "best": self.best.to_dict(), "best_is": self.best_origin,
                       "rule": "higher on what selects; where the pairs select, no loss on the held-back photos "
                               "against the start", "photo_loss_tolerance_db": PHOTO_LOSS_TOLERANCE_DB},
            bf16_agreement=self.agreement.to_dict() if self.agreement else None)

    def _write_provenance(self, finished: bool, seconds: float) -> None:
        self.output.write_provenance(self.provenance(finished, seconds))

    def _record_agreement(self) -> None:
        """Measure the saved checkpoint's bf16 agreement with fp32 on the held-back set, once per file, where
        this device runs bf16 natively (emulated bf16 would take long and decide nothing here)."""
        if not CpuCapabilities.detect().native_bf16 or not self.holdout.items:
            return  # measured on this machine's CPU, where CPU workers use it
        found = self._output_descriptor()
        if found is None:
            return
        recorded = agreement_in(self.output.read_provenance(), found[1])
        if recorded is not None or (self.agreement is not None and self.agreement.sha256 == found[1]):
            self.agreement = recorded or self.agreement
            return
        descriptor, sha256 = found
        measured_on = (f"held-back items of its training ({self.holdout.pair_count} pairs, "
                       f"{self.holdout.photo_count} photo crops)")
        self.agreement = descriptor_agreement(descriptor, sha256, self.holdout.pairs_for_agreement(), measured_on)
        logger.info("bf16 agreement of %s: %s", self.output.name, self.agreement.describe())

    # -- the loop ----------------------------------------------------------------------------------

    def evaluate(self, descriptor: Any = None) -> HoldoutScore | None:
        """Competition PSNR of the EMA model (or ``descriptor``'s, in fp32 on the CPU) on the held-back set
        (None when nothing is held back)."""
        if not self.holdout.items:
            return None
        if descriptor is None:
            upscaler = Upscaler(self.ema_descriptor, self.device, torch.float32, TilePolicy())
        else:
            upscaler = Upscaler(descriptor.eval().float(), torch.device("cpu"), torch.float32, TilePolicy())
        return self.holdout.score(lambda image: upscaler.upscale(image[None])[0])

    def _progress(self, phase_seconds: float) -> float:
        """How far through this phase's budget (0-1): steps or time, whichever is further."""
        progress = 0.0
        budget = self.config.step_budget
        if budget is not None:
            span = max(1, budget - self.phase.start_step)
            progress = (self.step - self.phase.start_step) / span
        if self.config.minutes:
            progress = max(progress, phase_seconds / (60 * self.config.minutes))
        return min(progress, 1.0)

    def _learning_rate(self, phase_seconds: float) -> float:
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * self._progress(phase_seconds)))

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of ``step`` as host tensors (pinned on CUDA, so the copy to the device does not
        block): runs on the prefetch thread on CUDA."""
        inputs, targets = make_batch(self.source, self.config, step)
        pin = self.device.type == "cuda"
        return _pinned(inputs, pin), _pinned(targets, pin)

    def _train_step(self, phase_seconds: float, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One step on ``batch``; its loss as a 0-d tensor, left where it was computed.

        A non-finite loss changes no weight (the EMA still averages the unchanged ones in) and the
        step counts: a retry would meet the same batch and the same model. With ``host_checks`` (a
        CPU, where reading the loss costs nothing) that is decided on the host before the backward
        pass; otherwise on the device, with no synchronisation: the fused optimizer skips its update
        when ``found_inf`` says so (the gradient scaler sets it for fp16, from the gradients).
        """
        x = _to_tensor(batch[0], self.device, self.channels_last)
        y = _to_tensor(batch[1], self.device, False)
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate(phase_seconds)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = _loss(self.model(x).float(), y, self.config)
        if self.host_checks and not torch.isfinite(loss):
            return loss.detach()
        self.scaler.scale(loss).backward()
        if not self.host_checks and not self.scaler.is_enabled():
            # The fused optimizer reads this attribute, which torch does not declare.
            self.optimizer.found_inf = (~torch.isfinite(loss.detach())).float()  # type: ignore[attr-defined]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))  # warm-up for short runs
        with torch.no_grad():
            ema_params, params = list(self.ema.parameters()), [p.detach() for p in self.model.parameters()]
            torch._foreach_mul_(ema_params, decay)  # one launch for all tensors, not two per tensor
            torch._foreach_add_(ema_params, params, alpha=1 - decay)
            for ema_b, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                ema_b.copy_(b)
        return loss.detach()

    def budget_used(self, phase_seconds: float) -> bool:
        budget = self.config.step_budget
        if budget is not None and self.step >= budget:
            return True
        minutes = self.config.minutes
        return minutes is not None and minutes > 0 and phase_seconds >= 60 * minutes

    def run(self, on_progress: Callable[[TrainProgress], None] | None = None,
            should_stop: Callable[[], bool] | None = None, budget_spent_s: float | None = None) -> TrainResult:
        """Train until this phase's budget is used up, or ``should_stop()`` says so (a chunk deadline).

        ``budget_spent_s``: seconds of the ``minutes`` budget already spent by this phase elsewhere
        (a distributed job's earlier chunks and queueing); default: what the saved state recorded.
        Ctrl-C saves the state (and keeps the best checkpoint), then re-raises: re-running resumes.
        """
        started = time.monotonic()
        if budget_spent_s is not None:
            self.phase = dataclasses.replace(self.phase, seconds=budget_spent_s)
        phase_before = self.phase.seconds
        if not self.scored:
            self._score_start()

        def phase_seconds() -> float:
            return phase_before + time.monotonic() - started

        log = _LossLog()
        late: deque[_LateLoss] = deque()
        loss = math.nan  # the latest loss read
        ended = self.budget_used(phase_seconds())
        prefetch = Prefetcher(self._batch) if self.device.type == "cuda" else None
        try:
            while not ended:
                if should_stop is not None and should_stop():
                    break
                batch = prefetch.get(self.step) if prefetch else self._batch(self.step)
                late.append(_LateLoss(self.step, self._train_step(phase_seconds(), batch)))
                self.step += 1
                ended = self.budget_used(phase_seconds())
                evaluating = ended or self.step % self.config.eval_every == 0
                # Losses are read once the device is past them: on a CPU at once; on CUDA one step late,
                # since reading this step's would wait for it (a host synchronisation every step).
                while late and (evaluating or late[0].ready() or len(late) > 1):
                    loss = log.account(late.popleft())
                scored = None
                if evaluating:
                    scored = self._checkpoint(log.take(), started, phase_before)
                if on_progress is not None:
                    on_progress(TrainProgress(self.step, self.config.step_budget, loss,
                                              scored.selects if scored else None, self.best_psnr,
                                              time.monotonic() - started))
        except KeyboardInterrupt:
            self._save_state(time.monotonic() - started)
            raise
        finally:
            if prefetch is not None:
                prefetch.close()
        while late:
            log.account(late.popleft())
        if log.losses:  # stopped between evaluations: evaluate what was learned since
            self._checkpoint(log.take(), started, phase_before)
        self._record_agreement()
        seconds = time.monotonic() - started
        self.phase = dataclasses.replace(self.phase, ended=ended)
        self._save_state(seconds)
        self._write_provenance(ended, seconds)
        self.phase = dataclasses.replace(self.phase, seconds=self.phase.seconds + seconds)
        self.seconds_before += seconds
        return TrainResult(self.step, self.best_step, self.best_psnr, ended, seconds, self.skipped, self.output.url(),
                           self.start_psnr, self.best_origin == START and self.start_psnr is not None,
                           kept_output=self.best_origin == PREVIOUS_OUTPUT, notes=list(self.notes))

    def _score_start(self) -> None:
        """Score the start checkpoint, and the model already in the output if there is one, on this held-back
        set; the better of the two is the output until a step beats it (the start replaces an earlier output
        only by scoring higher on the same set)."""
        start = load_descriptor(self.start_path) if self.step else self.ema_descriptor
        scored = self.evaluate(start if self.step else None)
        self.scored = True
        if scored is None:
            if self.step == 0:
                self._save_checkpoint()
            return
        self.start = scored.scores()
        existing = self._output_descriptor()
        if self.step == 0 and (existing is None or existing[1] == self.start_sha256):
            # A fresh run with no other model in the output: the start is the output until beaten.
            self.best, self.best_step, self.best_origin = self.start, 0, START
            self._save_checkpoint()
        elif existing is not None:
            incumbent = self.evaluate(existing[0])
            assert incumbent is not None
            if self.step == 0 and improves(self.start, incumbent.scores(), self.start, False):
                self.best, self.best_step, self.best_origin = self.start, 0, START
                self._save_checkpoint(start)
                self._note(f"the start scores {self.start.selects:.3f} dB on the held-back set, the model that was "
                           f"in {self.output.url()} {incumbent.selects:.3f}: the start replaces it")
            else:
                self.best = incumbent.scores()
                if self.step == 0:
                    self.best_step, self.best_origin = 0, PREVIOUS_OUTPUT
                    self._note(f"the model already in {self.output.url()} scores {incumbent.selects:.3f} dB on the "
                               f"held-back set, the start {self.start.selects:.3f}: it stays unless a checkpoint beats it")
        if self.step == 0:
            self.history.append({"step": 0, "loss": None, "holdout_psnr": _rounded(self.start.selects),
                                 "pairs_psnr": _rounded(self.start.pairs), "photos_psnr": _rounded(self.start.photos),
                                 "seconds": round(self.seconds_before, 1)})
        logger.info("start checkpoint scores %.3f dB on the held-back set", self.start.selects)

    def _checkpoint(self, losses: list[float], started: float, phase_before: float) -> HoldoutScore | None:
        """Evaluate, keep the weights if they are the best so far, save the state."""
        scored = self.evaluate()
        seconds = time.monotonic() - started
        self.history.append({"step": self.step, "loss": round(float(np.mean(losses)), 6) if losses else None,
                             "holdout_psnr": _rounded(scored.selects if scored else None),
                             "pairs_psnr": _rounded(scored.pairs if scored else None),
                             "photos_psnr": _rounded(scored.photos if scored else None),
                             "seconds": round(self.seconds_before + seconds, 1)})
        candidate = scored.scores() if scored else Scores()
        if improves(candidate, self.best, self.start, self.holdout.pairs_decide):
            self.best, self.best_step, self.best_origin = candidate, self.step, TRAINED
            self._save_checkpoint()
        self._save_state(seconds)
        self._write_provenance(False, seconds)
        return scored


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or 'CPU'}, {os.cpu_count()} cores"
