"""The training pairs of a dataset: ``train/train/X.png`` -> ``train/gt/X.png``, never ``val/`` or ``test/``.

Everything that learns from a dataset (calibration, fine-tuning) reads its pairs through here, so
the rule that the score's ground truth is never read holds in one place. A bad pair (a missing
partner, an unreadable file, a target that is not exactly 4x its input) is skipped with a reason
naming the file; the rest go on. A dataset that points into ``val/`` or ``test/`` is refused outright.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.errors import ConfigError, PermanentImageError
from workers.io.imageio import DecodeLimits, decode_image
from workers.io.storage import LocalStorage, Storage

# Splits nothing may be fitted on: reading them would leak the score's ground truth.
FORBIDDEN_SPLITS = frozenset({"val", "test"})
_SPLIT_FOLDERS = frozenset({"val", "test", "gt", "train"})  # folders inside a split (val/val, val/gt, ...)
# Training files are trusted more than pipeline inputs, but still decoded with limits.
TRAINING_LIMITS = DecodeLimits(max_bytes=200 * 1024 * 1024, max_pixels=256_000_000)
SCALE = 4
INPUTS, TARGETS = "train/train", "train/gt"


@dataclass(frozen=True)
class PairKeys:
    """One training pair's object keys, and its file name (what provenance hashes)."""

    input: str
    target: str

    @property
    def name(self) -> str:
        return self.input.rsplit("/", 1)[1]


@dataclass(frozen=True)
class PairListing:
    """The pairs a dataset lists, and the files that could not be paired (key, reason)."""

    pairs: tuple[PairKeys, ...]
    skipped: tuple[tuple[str, str], ...]


def refuse_split_root(label: str) -> None:
    """A dataset root that is a val/ or test/ split, or one of its folders (val/val, val/gt), is refused."""
    parts = [p.lower() for p in label.replace("\\", "/").rstrip("/").split("/")]
    last, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
    forbidden = FORBIDDEN_SPLITS & {last, parent if last in _SPLIT_FOLDERS else ""}
    if forbidden:
        raise ConfigError(
            f"refusing to learn from dataset root {label}: it is inside a "
            f"{'/'.join(sorted(forbidden))}/ split; only train/ is read"
        )


def training_pairs(dataset: Storage, label: str = "") -> PairListing:
    """The ``(train/train/X.png, train/gt/X.png)`` pairs of a dataset, sorted by name.

    Only ``train/`` is listed; nothing is read. On a local dataset every file is also resolved, so
    a ``train/`` that links into ``val/`` or ``test/`` is caught. An input without a target (or a
    target without an input) is skipped with its reason.

    Raises:
        ConfigError: the dataset root, or a listed file, is inside a ``val/`` or ``test/`` split;
            the ``train/train`` + ``train/gt`` layout is missing; or no pair is left.
    """
    where = label or dataset.root_url
    refuse_split_root(where)
    inputs = [k for k in dataset.list(INPUTS) if k.lower().endswith(".png") and k.count("/") == 2]
    targets = {k.rsplit("/", 1)[1]: k for k in dataset.list(TARGETS) if k.count("/") == 2}
    if not inputs and not targets:
        raise ConfigError(f"no {INPUTS} or {TARGETS} in {where}: expected the competition layout {INPUTS} + {TARGETS}")
    pairs, skipped = [], []
    for key in inputs:
        name = key.rsplit("/", 1)[1]
        if name not in targets:
            skipped.append((key, f"no target {TARGETS}/{name}"))
            continue
        pair = PairKeys(key, targets.pop(name))
        if isinstance(dataset, LocalStorage):
            for member in (pair.input, pair.target):
                _refuse_linked_split(dataset, member)
        pairs.append(pair)
    skipped += [(key, f"no input {INPUTS}/{name}") for name, key in sorted(targets.items()) if name.lower().endswith(".png")]
    if not pairs:
        reasons = "; ".join(f"{key}: {why}" for key, why in skipped[:3])
        raise ConfigError(f"no training pairs in {where}" + (f" ({reasons})" if reasons else f": {INPUTS} has no .png files"))
    return PairListing(tuple(pairs), tuple(skipped))


def _refuse_linked_split(dataset: LocalStorage, key: str) -> None:
    resolved = Path(dataset.url(key)).resolve()
    for split in FORBIDDEN_SPLITS:
        if resolved.is_relative_to((dataset.root / split).resolve()):
            raise ConfigError(
                f"refusing to learn from training file {key} (resolves to {resolved}): "
                f"it is inside a {split}/ split; only train/ is read"
            )


def load_pair(dataset: Storage, pair: PairKeys, limits: DecodeLimits = TRAINING_LIMITS) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair as RGB uint8 arrays (input, target).

    Raises:
        PermanentImageError: a file cannot be decoded, exceeds ``limits``, or the target is not
            exactly 4x the input (the message names the file).
        TransientError: the storage could not be reached.
    """
    inp = decode_image(dataset.get(pair.input), pair.input, limits)
    target = decode_image(dataset.get(pair.target), pair.target, limits)
    h, w = inp.shape[:2]
    if target.shape[:2] != (SCALE * h, SCALE * w):
        raise PermanentImageError(
            pair.target, f"is {target.shape[1]}x{target.shape[0]}, not exactly {SCALE}x its {w}x{h} input ({pair.input})")
    return inp, target


def load_training_pairs(dataset: Storage, pairs: Iterable[PairKeys], skipped: list[tuple[str, str]],
                        limits: DecodeLimits = TRAINING_LIMITS) -> Iterator[tuple[PairKeys, np.ndarray, np.ndarray]]:
    """Decode pairs lazily, one at a time; a bad pair is appended to ``skipped`` (key, reason) and passed over."""
    for pair in pairs:
        try:
            inp, target = load_pair(dataset, pair, limits)
        except PermanentImageError as exc:
            skipped.append((exc.name, exc.reason))
            continue
        yield pair, inp, target
