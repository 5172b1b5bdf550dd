"""The training pairs of a dataset: ``train/train/X.png`` -> ``train/gt/X.png``, never ``val/`` or ``test/``.

Everything that learns from a dataset (the tone curve, the forward model, fine-tuning) reads its
pairs through here, so the rule that the score's ground truth is never read holds in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def refuse_split_root(label: str) -> None:
    """A dataset root that is a val/ or test/ split, or one of its folders (val/val, val/gt), is refused."""
    parts = [p.lower() for p in label.replace("\\", "/").rstrip("/").split("/")]
    last, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
    forbidden = FORBIDDEN_SPLITS & {last, parent if last in _SPLIT_FOLDERS else ""}
    if forbidden:
        raise ConfigError(
            f"refusing to fit a tone curve on dataset root {label}: it is inside a "
            f"{'/'.join(sorted(forbidden))}/ split; fit only on train/"
        )


def training_pairs(dataset: Storage, label: str = "") -> list[tuple[str, str]]:
    """``(train/train/X.png, train/gt/X.png)`` key pairs of a dataset, sorted by name.

    Only ``train/`` is listed; nothing is read. On a local dataset every file is also resolved, so
    a ``train/`` that links into ``val/`` or ``test/`` is caught.

    Raises:
        ConfigError: the dataset root, or a listed file, is inside a ``val/`` or ``test/`` split;
            the ``train/train`` + ``train/gt`` layout is missing; an input has no target of the same
            name; or there is no pair at all.
    """
    refuse_split_root(label or dataset.url("train"))
    inputs = [k for k in dataset.list("train/train") if k.lower().endswith(".png") and k.count("/") == 2]
    targets = {k.rsplit("/", 1)[1] for k in dataset.list("train/gt") if k.count("/") == 2}
    if not inputs and not targets:
        raise ConfigError(f"no train/train or train/gt in {label or dataset.url('train')}: "
                          "expected the competition layout train/train + train/gt")
    pairs = []
    for key in inputs:
        name = key.rsplit("/", 1)[1]
        if name not in targets:
            raise ConfigError(f"training input {key} has no target train/gt/{name}")
        pair = (key, f"train/gt/{name}")
        if isinstance(dataset, LocalStorage):
            for member in pair:
                _refuse_linked_split(dataset, member)
        pairs.append(pair)
    if not pairs:
        raise ConfigError(f"no training pairs: train/train in {label or dataset.url('train')} has no .png files")
    return pairs


def _refuse_linked_split(dataset: LocalStorage, key: str) -> None:
    resolved = Path(dataset.url(key)).resolve()
    for split in FORBIDDEN_SPLITS:
        if resolved.is_relative_to((dataset.root / split).resolve()):
            raise ConfigError(
                f"refusing to fit a tone curve on training file {key} (resolves to {resolved}): "
                f"it is inside a {split}/ split; fit only on train/"
            )


def load_training_pairs(
    dataset: Storage, pairs: Iterable[tuple[str, str]], limits: DecodeLimits = TRAINING_LIMITS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Decode pairs lazily, one at a time, as RGB uint8 arrays.

    Raises:
        ConfigError: a file cannot be decoded or exceeds ``limits`` (naming the file).
    """
    for inp, target in pairs:
        try:
            yield (
                decode_image(dataset.get(inp), inp, limits),
                decode_image(dataset.get(target), target, limits),
            )
        except PermanentImageError as exc:
            raise ConfigError(f"training pair: {exc}") from None
