"""Training inputs: pair datasets, photo folders, settings for a temporary store, the tiny training config."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.paths import DATASET
from workers.ops.degrade import ForwardModel
from workers.settings import Settings
from workers.training.config import TrainConfig

TINY = TrainConfig(steps=6, batch=4, crop=12, eval_every=3, holdout=0.25)


def write_dataset(root: Path, count: int = 6, width: int = 24, height: int = 16) -> Path:
    """Small pairs from the repository sample's targets (crops), inputs made with the forward model."""
    targets = sorted((DATASET / "train" / "gt").glob("*.png"))
    forward = ForwardModel()
    for k in range(count):
        target = np.asarray(Image.open(targets[k % len(targets)]))[: 4 * height, : 4 * width]
        for folder, image in (("train/gt", target), ("train/train", forward.degrade(target, np.random.default_rng(k)))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / folder / f"gt_{k:05d}.png")
    shutil.copy(DATASET / "calibration.json", root) if (DATASET / "calibration.json").is_file() else None
    return root


def settings(**changes: object) -> Settings:
    return Settings(device="cpu", weights_dir="/nonexistent", photo_corpus="").replace(**changes)


def textured_photo(seed: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A smooth colour scene with edges: something to learn, nothing flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 90 * np.sin(x / (5 + c + seed % 3)) * np.cos(y / (7 + c)) for c in range(3)], axis=-1)
    base[(x // 20 + y // 20) % 2 == 0] *= 0.6
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def write_photos(folder: Path, count: int = 5, **size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        Image.fromarray(textured_photo(k, **size)).save(folder / f"photo_{k}.png")
    return folder
