"""The held-back set that picks the best checkpoint: pairs and photo crops never trained on.

A handful of flat, dark pairs cannot rank checkpoints (every model scores the same on them), so
the set is built to move: held-back pairs are taken in a fixed order (by hashing their names),
passing over flat ones while textured ones remain, and, where photos are given, a fixed number of
textured crops of held-back photos is added, each brought to a drawn brightness and degraded with
noise fixed once (the set is the same at every evaluation and on every resume).

The score that selects is the mean competition PSNR over the held-back pairs when at least
:data:`MIN_HOLDOUT_PAIRS` are held back (the user's own data decides), else over every item. A
checkpoint replaces the best one only if it scores higher, and, where pairs decide, does not lose more
than :data:`PHOTO_LOSS_TOLERANCE_DB` on the held-back photos against the start (:func:`improves`): a
handful of pairs cannot pull a model off what the photos taught it and call that a gain.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from workers.errors import PermanentImageError
from workers.io.submission import grey_subsample
from workers.ops.degrade import BrightnessDistribution, ForwardModel
from workers.ops.metrics import psnr
from workers.training.photos import PhotoCache, photo_pair
from workers.training.state import Scores

logger = logging.getLogger(__name__)

MIN_HOLDOUT_PAIRS = 4
FLAT_GREY_STD = 4.0  # a target whose grey standard deviation is below this (of 255) is flat
HOLDOUT_SEED = 20_261_205  # the held-back crops and their noise, fixed once for every run
_TRIES_PER_CROP = 8
PHOTO_LOSS_TOLERANCE_DB = 0.0  # "does not lose on the held-back photos": not even a little


@dataclass(frozen=True)
class HeldItem:
    """One held-back (input, target) and where it came from."""

    name: str
    kind: str  # "pair" or "photo"
    input: np.ndarray
    target: np.ndarray


@dataclass
class HoldoutScore:
    """One evaluation: mean PSNR over the pairs, over the photo crops, and the one that selects."""

    pairs: float | None
    photos: float | None
    selects: float | None
    per_item: dict[str, float] = field(default_factory=dict)

    def scores(self) -> Scores:
        return Scores(self.selects, self.pairs, self.photos)


def improves(candidate: Scores, best: Scores, start: Scores, pairs_decide: bool) -> bool:
    """Whether a checkpoint scoring ``candidate`` replaces the best so far (``best``; the start's: ``start``).

    It must score higher on what selects; where the held-back pairs decide, it must also score at least
    the start's on the held-back photos (less :data:`PHOTO_LOSS_TOLERANCE_DB`). With nothing held back
    (no score at all) the latest checkpoint is the best.
    """
    if candidate.selects is None or best.selects is None:
        return best.selects is None
    if candidate.selects <= best.selects:
        return False
    if pairs_decide and candidate.photos is not None and start.photos is not None:
        return candidate.photos >= start.photos - PHOTO_LOSS_TOLERANCE_DB
    return True


def is_flat(target: np.ndarray) -> bool:
    return float(grey_subsample(target).std()) < FLAT_GREY_STD


@dataclass
class HoldoutSet:
    items: list[HeldItem]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def pair_count(self) -> int:
        return sum(item.kind == "pair" for item in self.items)

    @property
    def photo_count(self) -> int:
        return sum(item.kind == "photo" for item in self.items)

    @property
    def pairs_decide(self) -> bool:
        return self.pair_count >= MIN_HOLDOUT_PAIRS

    def identity(self) -> str:
        """A hash of what is held back (names and pixels): a changed set must be scored afresh."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(f"{item.kind}:{item.name}:{item.input.shape}\n".encode())
            digest.update(item.input.tobytes())
            digest.update(item.target.tobytes())
        return digest.hexdigest()

    def pairs_for_agreement(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(item.input, item.target) for item in self.items]

    def describe(self) -> dict[str, object]:
        return {"pairs": [i.name for i in self.items if i.kind == "pair"],
                "photo_crops": [i.name for i in self.items if i.kind == "photo"]}

    def score(self, upscale: Callable[[np.ndarray], np.ndarray]) -> HoldoutScore:
        """Mean PSNRs of ``upscale`` (one H x W x 3 uint8 image -> its 4x) over the items."""
        per_item = {item.name: psnr(grey_subsample(upscale(item.input)), grey_subsample(item.target))
                    for item in self.items}
        pairs = [per_item[i.name] for i in self.items if i.kind == "pair"]
        photos = [per_item[i.name] for i in self.items if i.kind == "photo"]
        selects = _mean(pairs) if self.pairs_decide else _mean(pairs + photos)
        return HoldoutScore(_mean(pairs), _mean(photos), selects, per_item)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def held_pairs(load: Callable[[int], tuple[np.ndarray, np.ndarray]], names: Sequence[str], want: int,
               skipped: list[tuple[str, str]]) -> list[HeldItem]:
    """Up to ``want`` held-back pairs from ``names`` (in order), textured ones first.

    ``load(i)`` decodes the i-th; an unreadable pair is listed in ``skipped``.
    """
    textured: list[HeldItem] = []
    flat: list[HeldItem] = []
    for index, name in enumerate(names):
        if len(textured) >= want:
            break
        try:
            inp, target = load(index)
        except PermanentImageError as exc:
            skipped.append((exc.name, exc.reason))
            continue
        (flat if is_flat(target) else textured).append(HeldItem(name, "pair", inp, target))
    return (textured + flat)[:want]


def held_photo_crops(photos: PhotoCache, count: int, crop: int, forward: ForwardModel,
                     brightness: BrightnessDistribution) -> list[HeldItem]:
    """``count`` textured crops spread over the held-back photos, with noise fixed by :data:`HOLDOUT_SEED`."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    items: list[HeldItem] = []
    live = photos.live
    for n in range(count * _TRIES_PER_CROP):
        if len(items) >= count or not live:
            break
        index = live[n % len(live)]
        try:
            photo = photos.get(index)
        except PermanentImageError:
            live = photos.live
            continue
        inp, target = photo_pair(photo, crop, forward, brightness, rng)
        if not is_flat(target):
            items.append(HeldItem(f"{photos.listing.keys[index]}#{len(items)}", "photo", inp, target))
    return items
