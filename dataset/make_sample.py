"""Generate the small, deterministic low-light super-resolution sample dataset.

The sample mirrors the layout of the Kaggle low-light x4 super-resolution
competition (see README.md next to this file) so that the pipeline can be
exercised end to end without the real data.

Sources: photographs bundled with scikit-image (``skimage.data``), all of which
load from the installed package without any network access:

* ``astronaut``            -- Eileen Collins, NASA; public domain.
* ``chelsea``              -- Chelsea the cat, Stefan van der Walt; CC0.
* ``coffee``               -- coffee cup, Rachel Michetti; CC0.
* ``rocket``               -- DSCOVR launch on Falcon 9, SpaceX; public domain.
* ``hubble_deep_field``    -- Hubble eXtreme Deep Field, NASA; public domain.
* ``immunohistochemistry`` -- IHC-stained colonic glands, CMMI; no known
  copyright restrictions.

Each source is first downscaled by a per-source factor (``cv2.INTER_AREA``)
so that a 256x160 crop holds a meaningful scene.  Crop boxes on the same
source never overlap (asserted), so no region appears in two splits.

Degradation of a ground-truth crop GT (uint8 RGB, 160x256):

1. ``LR = cv2.resize(GT, (64, 40), interpolation=cv2.INTER_AREA)`` (x4 area).
2. Darken: ``x = LR / 255``; ``x = GAIN * x ** GAMMA`` (0.6 and 1.3).
3. Poisson-Gaussian noise:
   ``y = rng.poisson(x * PEAK) / PEAK + rng.normal(0, SIGMA, x.shape)``
   with PEAK = 60 photons and SIGMA = 0.02.
4. Clip to [0, 1], scale by 255, round to uint8.

Noise uses ``numpy.random.default_rng((SEED, k))`` for the k-th image, and PNGs
are written by Pillow without metadata, so reruns are byte-identical.

Run from the repository root: ``python dataset/make_sample.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

OUT_DIR = Path(__file__).resolve().parent
SEED = 20240601

GT_W, GT_H = 256, 160
UPSCALE = 4
LR_W, LR_H = GT_W // UPSCALE, GT_H // UPSCALE

GAIN = 0.6
GAMMA = 1.3
PEAK = 60.0  # photons at full scale
SIGMA = 0.02  # read-noise standard deviation, in [0, 1] units

SUBMISSION_COLUMNS = GT_W * GT_H // 8  # 5120 pixel columns
MAX_VALUE = 255

# Downscale factor applied to each source photo before cropping.
SOURCE_SCALES: dict[str, float] = {
    "astronaut": 1.0,
    "chelsea": 0.7,
    "coffee": 0.9,
    "rocket": 0.8,
    "hubble_deep_field": 0.52,
    "immunohistochemistry": 1.0,
}

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (half-open), scaled coords


@dataclass(frozen=True)
class Crop:
    """A GT_W x GT_H crop at (x, y) of a source downscaled by its factor."""

    source: str
    x: int
    y: int

    @property
    def box(self) -> Box:
        return (self.x, self.y, self.x + GT_W, self.y + GT_H)


SPLITS: dict[str, tuple[Crop, ...]] = {
    "test": (
        Crop("astronaut", 0, 300),  # mission patch, flag
        Crop("coffee", 130, 10),  # cup of espresso
        Crop("rocket", 0, 8),  # left launch tower at dusk
        Crop("hubble_deep_field", 0, 20),
        Crop("immunohistochemistry", 0, 0),
        Crop("astronaut", 256, 180),  # shuttle model base, collar
        Crop("rocket", 256, 8),  # right towers, rocket nose
        Crop("immunohistochemistry", 256, 176),
    ),
    "val": (
        Crop("astronaut", 140, 10),  # face
        Crop("chelsea", 30, 25),  # cat face
        Crop("rocket", 120, 176),  # rocket base, pad lights
        Crop("hubble_deep_field", 264, 20),
    ),
    "train": (
        Crop("astronaut", 256, 352),  # helmet
        Crop("coffee", 200, 190),  # saucer and spoon
        Crop("hubble_deep_field", 0, 240),
        Crop("hubble_deep_field", 264, 240),
        Crop("immunohistochemistry", 0, 352),
    ),
}


def load_source(name: str) -> np.ndarray:
    """Load a bundled scikit-image photo, downscaled by its SOURCE_SCALES factor."""
    image = getattr(data, name)()
    height, width = image.shape[:2]
    scale = SOURCE_SCALES[name]
    size = (round(width * scale), round(height * scale))
    if size == (width, height):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def boxes_overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def check_crops(crops: list[Crop], sources: dict[str, np.ndarray]) -> None:
    """Assert every box lies inside its source and no two boxes on a source overlap."""
    for crop in crops:
        height, width = sources[crop.source].shape[:2]
        x0, y0, x1, y1 = crop.box
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height, crop
    for a, b in combinations(crops, 2):
        if a.source == b.source:
            assert not boxes_overlap(a.box, b.box), (a, b)


def cut(crop: Crop, sources: dict[str, np.ndarray]) -> np.ndarray:
    x0, y0, x1, y1 = crop.box
    return np.ascontiguousarray(sources[crop.source][y0:y1, x0:x1])


def degrade(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the x4 area downscale, darkening and Poisson-Gaussian noise."""
    lr = cv2.resize(gt, (LR_W, LR_H), interpolation=cv2.INTER_AREA)
    x = lr.astype(np.float64) / MAX_VALUE
    x = GAIN * x**GAMMA
    y = rng.poisson(x * PEAK) / PEAK + rng.normal(0.0, SIGMA, x.shape)
    return np.round(np.clip(y, 0.0, 1.0) * MAX_VALUE).astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", optimize=True)
    return path


def output_paths(split: str, number: int) -> tuple[Path, Path | None]:
    """Return (degraded input path, ground-truth path or None) for one image."""
    stem = f"{number:05d}"
    if split == "test":
        return OUT_DIR / "test" / f"test_{stem}.png", None
    gt_path = OUT_DIR / split / "gt" / f"gt_{stem}.png"
    input_prefix = "val" if split == "val" else "gt"  # competition names train inputs gt_*
    return OUT_DIR / split / split / f"{input_prefix}_{stem}.png", gt_path


def write_images(sources: dict[str, np.ndarray]) -> list[Path]:
    written: list[Path] = []
    index = 0
    for split, crops in SPLITS.items():
        for number, crop in enumerate(crops, start=1):
            gt = cut(crop, sources)
            rng = np.random.default_rng((SEED, index))
            index += 1
            input_path, gt_path = output_paths(split, number)
            written.append(save_png(degrade(gt, rng), input_path))
            if gt_path is not None:
                written.append(save_png(gt, gt_path))
    return written


def write_sample_submission() -> Path:
    """Write an all-zero submission with one row per test image, sorted by ID."""
    path = OUT_DIR / "sample_submission.csv"
    header = ",".join(["ID"] + [f"pixel_{i}" for i in range(SUBMISSION_COLUMNS)])
    zeros = ",".join(["0"] * SUBMISSION_COLUMNS)
    test_stems = sorted(output_paths("test", n)[0].stem for n in range(1, len(SPLITS["test"]) + 1))
    ids = [stem.replace("test_", "gt_") for stem in test_stems]
    lines = [header] + [f"{image_id},{zeros}" for image_id in ids]
    path.write_bytes(("\n".join(lines) + "\n").encode("ascii"))
    return path


def main() -> None:
    sources = {name: load_source(name) for name in SOURCE_SCALES}
    check_crops([crop for crops in SPLITS.values() for crop in crops], sources)
    written = write_images(sources) + [write_sample_submission()]
    total = sum(path.stat().st_size for path in written)
    print(f"wrote {len(written)} files ({total} bytes) under {OUT_DIR}")


if __name__ == "__main__":
    main()
