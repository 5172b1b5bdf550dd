"""Clean photographs as training data: because the forward model is known, every photo is a pair.

A photo folder (a local directory or an object-store prefix, e.g. the corpus that
``scripts/fetch-photo-corpus`` assembles) is listed once. Photos are decoded on demand into a
bounded LRU cache, so memory stays flat in the size of the corpus, and a photo larger than needed
is box-downscaled by an integer factor first: packaged photos carry JPEG/WebP artefacts and
sharpening at 100%, which averaging pixels hides. Each use crops a target, brings it to a
brightness drawn from the calibration (the data's targets are dark), and synthesises its input with
the forward model (:func:`photo_pair`).

A photo that cannot be used (unreadable, too small for one crop, greyscale, with alpha) is skipped
with a reason naming it, and the rest go on; a folder with no usable photo stops training.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.errors import ConfigError, ObjectNotFoundError, PermanentImageError
from workers.io.imageio import DecodeLimits, decode_image, header_mode
from workers.io.storage import Storage
from workers.ops.degrade import BrightnessDistribution, ForwardModel
from workers.training.pairs import SCALE, TRAINING_LIMITS

logger = logging.getLogger(__name__)

PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
PHOTOS_FOLDER = "photos"  # a dataset's own clean photos: DATASET/photos/
CORPUS_MANIFEST = "manifest.json"  # written by scripts/fetch-photo-corpus beside photos/
# A photo is box-downscaled by the largest integer factor that keeps its short side at least this:
# a 4000x3000 phone photo by 5, a 1920x1080 wallpaper by 2, a 1024x768 one not at all.
PHOTO_SHORT_SIDE = 512
# Channels closer than this (mean absolute difference, of 255) make a photo greyscale: it would
# teach the model that colour noise is signal.
GREY_CHANNEL_DIFFERENCE = 1.0
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(frozen=True)
class PhotoListing:
    """The photos of a folder, sorted, and what identifies the set (for provenance)."""

    storage: Storage
    keys: tuple[str, ...]
    label: str  # for messages: the folder as the user named it
    names_sha256: str  # of the sorted keys
    manifest_sha256: str | None  # of the corpus manifest.json beside the photos, when there is one


def list_photos(storage: Storage, label: str, manifest: tuple[Storage, str] | None = None) -> PhotoListing:
    """Every photo file under ``storage`` (recursively), sorted by key.

    ``manifest``: where a corpus manifest may be (its hash goes into provenance when it exists).

    Raises:
        ConfigError: the folder holds no file with a photo extension.
    """
    keys = tuple(k for k in storage.list("") if k.lower().endswith(PHOTO_EXTENSIONS))
    if not keys:
        raise ConfigError(f"no photos in {label}: expected {', '.join(PHOTO_EXTENSIONS)} files")
    manifest_sha256 = None
    if manifest is not None:
        with contextlib.suppress(ObjectNotFoundError):
            manifest_sha256 = hashlib.sha256(manifest[0].get(manifest[1])).hexdigest()
    names = hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()
    return PhotoListing(storage, keys, label, names, manifest_sha256)


def has_prefix(storage: Storage, prefix: str) -> bool:
    """Whether any object lies under ``prefix`` (reads one listing entry at most)."""
    return next(iter(storage.list(prefix)), None) is not None


def box_downscale_factor(width: int, height: int, short_side: int = PHOTO_SHORT_SIDE) -> int:
    """The largest integer factor that keeps the photo's short side at least ``short_side`` (>= 1)."""
    return max(1, min(width, height) // short_side)


def box_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks (edges that do not fill a block are cropped), rounded to uint8."""
    if factor <= 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, 3).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def prepare_photo(data: bytes, key: str, min_target_side: int, short_side: int = PHOTO_SHORT_SIDE,
                  limits: DecodeLimits = TRAINING_LIMITS) -> np.ndarray:
    """Decode one photo as RGB uint8, box-downscaled when larger than needed.

    Raises:
        PermanentImageError: unreadable, greyscale, with an alpha channel, or smaller than one
            ``min_target_side`` square crop (after downscaling); the message names the photo.
    """
    rgb = decode_image(data, key, limits)
    mode, transparent = header_mode(data, key)  # not Image.open: its own pixel limit is below TRAINING_LIMITS
    if mode in _ALPHA_MODES or transparent:
        raise PermanentImageError(key, f"has an alpha channel ({mode}): cut-outs are not photos")
    if mode in _GREY_MODES or _is_grey(rgb):
        raise PermanentImageError(key, "is greyscale: the model must learn colour noise from colour photos")
    rgb = box_downscale(rgb, box_downscale_factor(rgb.shape[1], rgb.shape[0], short_side))
    if min(rgb.shape[:2]) < min_target_side:
        raise PermanentImageError(
            key, f"is {rgb.shape[1]}x{rgb.shape[0]} after downscaling, smaller than one {min_target_side}px crop")
    return rgb


def _is_grey(rgb: np.ndarray) -> bool:
    sample = rgb[:: max(1, rgb.shape[0] // 64), :: max(1, rgb.shape[1] // 64)].astype(np.int16)
    spread = np.abs(sample[..., 0] - sample[..., 1]) + np.abs(sample[..., 1] - sample[..., 2])
    return float(spread.mean()) < GREY_CHANNEL_DIFFERENCE


class PhotoCache:
    """Prepared photos by index, least recently used dropped past ``max_bytes``; bad photos remembered."""

    def __init__(self, listing: PhotoListing, indices: Sequence[int], min_target_side: int, max_bytes: int,
                 short_side: int = PHOTO_SHORT_SIDE) -> None:
        self.listing, self.indices = listing, list(indices)
        self.min_target_side, self.max_bytes, self.short_side = min_target_side, max_bytes, short_side
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.skipped: dict[str, str] = {}  # key -> reason

    @property
    def live(self) -> list[int]:
        return [i for i in self.indices if self.listing.keys[i] not in self.skipped]

    def get(self, index: int) -> np.ndarray:
        """The prepared photo. Raises PermanentImageError for a bad one (it joins ``skipped``)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        key = self.listing.keys[index]
        try:
            try:
                data = self.listing.storage.get(key)
            except ObjectNotFoundError:
                raise PermanentImageError(key, "is gone from the folder since it was listed") from None
            photo = prepare_photo(data, key, self.min_target_side, self.short_side)
        except PermanentImageError as exc:
            if key not in self.skipped:
                logger.warning("training skips photo %s: %s", key, exc.reason)
            self.skipped[key] = exc.reason
            raise
        self._cache[index] = photo
        self._bytes += photo.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return photo

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """A random usable photo (drawn with ``rng``; bad ones are skipped and another is drawn).

        Raises:
            ConfigError: no usable photo is left.
        """
        while True:
            live = self.live
            if not live:
                raise ConfigError(f"no usable photo in {self.listing.label} "
                                  f"({len(self.skipped)} skipped, e.g. {next(iter(self.skipped.items()), ('', ''))})")
            index = live[int(rng.integers(len(live)))]
            try:
                return self.get(index)
            except PermanentImageError:
                continue


def photo_pair(photo: np.ndarray, crop: int, forward: ForwardModel, brightness: BrightnessDistribution,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(input crop x crop, target 4crop x 4crop), both uint8: a random target crop of ``photo``, the
    whole photo's mean brought to a brightness drawn from ``brightness`` (so a crop keeps its
    place in the picture's light), and an input synthesised from it with fresh noise.
    """
    side = SCALE * crop
    y = int(rng.integers(photo.shape[0] - side + 1))
    x = int(rng.integers(photo.shape[1] - side + 1))
    gain = brightness.draw(rng) / max(float(photo.mean()), 1.0)
    target = photo[y : y + side, x : x + side].astype(np.float32) * gain
    target = np.clip(np.rint(target), 0, 255).astype(np.uint8)
    return forward.degrade(target, rng), target


def split_photos(listing: PhotoListing, share: float, most: int) -> tuple[list[int], list[int]]:
    """(training, held back) photo indices: a fixed slice chosen by hashing the keys, so it never moves.

    At least one photo is held back whenever there are three or more.
    """
    count = len(listing.keys)
    if count < 3 or share <= 0:
        return list(range(count)), []
    held_count = max(1, min(most, round(share * count)))
    ranked = sorted(range(count), key=lambda i: hashlib.sha1(listing.keys[i].encode()).hexdigest())
    held = set(ranked[:held_count])
    return [i for i in range(count) if i not in held], sorted(held)
