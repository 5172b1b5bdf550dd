"""What one training step sees: random crops of training pairs and of clean photos, as uint8 arrays.

The batch of step ``s`` is a pure function of ``(seed, s)`` and the data, so a resumed run sees
exactly the batches an uninterrupted one would. Of each batch, ``photo_share`` of the crops come
from photos (all of them when there are no pairs); of the pair crops, ``fresh_share`` get a new
input synthesised from the target with the forward model, the rest keep the pair's real input.
Decoded pairs and photos sit in bounded LRU caches, so memory does not grow with the data.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from workers.errors import ConfigError, PermanentImageError
from workers.io.storage import Storage
from workers.ops.degrade import BrightnessDistribution, ForwardModel
from workers.training.config import TrainConfig
from workers.training.pairs import PairKeys, load_pair
from workers.training.photos import PhotoCache, photo_pair

logger = logging.getLogger(__name__)


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


def dihedral(image: np.ndarray, transform: int) -> np.ndarray:
    """One of the 8 flips/rotations of an H x W x C array (0 is the identity)."""
    out = np.rot90(image, transform % 4)
    return np.ascontiguousarray(out[:, ::-1] if transform >= 4 else out)


@dataclass
class BatchSource:
    """Where crops come from: training pairs (with the indices still usable) and/or clean photos."""

    forward: ForwardModel
    brightness: BrightnessDistribution
    pairs: PairCache | None = None
    pair_indices: Sequence[int] = ()
    photos: PhotoCache | None = None
    bad_pairs: set[int] = field(default_factory=set)

    def photo_crops(self, config: TrainConfig) -> int:
        """How many crops of each batch come from photos."""
        if self.photos is None:
            return 0
        if self.pairs is None or not self.pair_indices:
            return config.batch
        return round(config.photo_share * config.batch)

    def draw_pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random readable pair; an unreadable one joins ``bad_pairs`` and another is drawn."""
        assert self.pairs is not None
        while True:
            live = [i for i in self.pair_indices if i not in self.bad_pairs]
            if not live:
                raise ConfigError("no readable training pair left")
            index = live[int(rng.integers(len(live)))]
            try:
                return self.pairs.get(index)
            except PermanentImageError as exc:
                logger.warning("training skips %s: %s", exc.name, exc.reason)
                self.bad_pairs.add(index)


def make_batch(source: BatchSource, config: TrainConfig, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The (inputs, targets) uint8 batch of ``step``: a pure function of ``(seed, step)`` and the data."""
    rng = np.random.default_rng((config.seed, step))
    from_photos = source.photo_crops(config)
    chosen = [source.draw_pair(rng) for _ in range(config.batch - from_photos)]
    crop = min(config.crop, *(min(inp.shape[:2]) for inp, _ in chosen)) if chosen else config.crop
    fresh = round(config.fresh_share * len(chosen))
    inputs, targets = [], []
    for i, (inp, target) in enumerate(chosen):
        y = int(rng.integers(inp.shape[0] - crop + 1))
        x = int(rng.integers(inp.shape[1] - crop + 1))
        hr = target[4 * y : 4 * (y + crop), 4 * x : 4 * (x + crop)]
        lr = source.forward.degrade(hr, rng) if i < fresh else inp[y : y + crop, x : x + crop]
        inputs.append(lr)
        targets.append(hr)
    for _ in range(from_photos):
        assert source.photos is not None
        lr, hr = photo_pair(source.photos.draw(rng), crop, source.forward, source.brightness, rng)
        inputs.append(lr)
        targets.append(hr)
    transforms = rng.integers(8, size=len(inputs))
    return (np.stack([dihedral(a, int(t)) for a, t in zip(inputs, transforms, strict=True)]),
            np.stack([dihedral(a, int(t)) for a, t in zip(targets, transforms, strict=True)]))
