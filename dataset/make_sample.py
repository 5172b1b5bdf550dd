"""Generate the small, deterministic sample dataset, degraded with the competition's forward model.

The sample mirrors the layout of the Kaggle low-light x4 super-resolution competition (see
README.md next to this file), and its inputs are made the way competitors measured the real ones:

1. A ground-truth crop GT (256x160 RGB) of a photo is made dark: a gamma curve brings its mean to a
   level drawn uniformly from TARGET_MEAN (30-55 of 255; the real targets average about 41).
   The target stays this dark: the task is denoising plus super-resolution, not brightening.
2. Its input is ``clip(floor(g * Poisson(box4(GT) / g) + N(0, sigma2)), 0, 255)`` with g = 2.49 and
   sigma2 = 3.1: a 4x4 box mean, Poisson shot noise, Gaussian read noise, truncation
   (:class:`workers.ops.degrade.ForwardModel`, the code the pipeline trains with). No extra darkening.

Sources: photographs bundled with scikit-image (``skimage.data``), loading with no network access:

* ``astronaut``            -- Eileen Collins, NASA; public domain.
* ``chelsea``              -- Chelsea the cat, Stefan van der Walt; CC0.
* ``coffee``               -- coffee cup, Rachel Michetti; CC0.
* ``rocket``               -- DSCOVR launch on Falcon 9, SpaceX; public domain.
* ``hubble_deep_field``    -- Hubble eXtreme Deep Field, NASA; public domain.
* ``immunohistochemistry`` -- IHC-stained colonic glands, CMMI; no known copyright restrictions.
* ``retina``               -- fundus photograph, Mikael Haggstrom; CC0.

Each photo is resized by its SOURCE_SCALES factor (bicubic up, area down) and cut into a grid of
non-overlapping 256x160 cells; cells with too little content (grey std below MIN_CONTENT_STD: the
retina's black corners) are dropped. Each photo's cells are shuffled with a fixed seed and dealt to
the splits by QUOTAS (test, val, then up to a cap to train), so every split sees several photos and no region
of a photo is in two splits. Noise for the k-th image comes from ``default_rng((SEED, k))`` and PNGs
are written by Pillow without metadata, so reruns are byte-identical.

Run from the repository root: ``python dataset/make_sample.py``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

OUT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(OUT_DIR.parent))
from workers.ops.degrade import ForwardModel  # noqa: E402

SEED = 20261203
GT_W, GT_H = 256, 160
SUBMISSION_COLUMNS = GT_W * GT_H // 8  # 5120 pixel columns
TARGET_MEAN = (30.0, 55.0)
MIN_CONTENT_STD = 10.0
FORWARD = ForwardModel(gain=2.49, read_variance=3.1, kernel="box", quantisation="floor")

# Photos are enlarged (bicubic) before cutting. At their own size these small photos hold far more
# detail per pixel than the competition's 1024x640 targets (bicubic x4 scores ~28 dB on them, ~31.5
# on the real pairs); at 2.5x a crop's bicubic baseline matches the real data's (see README.md).
SOURCE_SCALES: dict[str, float] = {
    "astronaut": 2.5,
    "chelsea": 2.5,
    "coffee": 2.5,
    "rocket": 2.5,
    "hubble_deep_field": 2.5,
    "immunohistochemistry": 2.5,
    "retina": 1.5,
}
# Cells of each photo for (test, val, train at most); the sample must stay under 3 MB.
QUOTAS: dict[str, tuple[int, int, int]] = {
    "astronaut": (1, 1, 6),
    "chelsea": (1, 1, 6),
    "coffee": (1, 1, 6),
    "rocket": (1, 1, 6),
    "hubble_deep_field": (1, 2, 6),
    "immunohistochemistry": (1, 1, 6),
    "retina": (2, 1, 6),
}
SPLITS = ("test", "val", "train")


@dataclass(frozen=True)
class Cell:
    source: str
    x: int
    y: int


def load_source(name: str) -> np.ndarray:
    """A bundled scikit-image photo, resized by its SOURCE_SCALES factor."""
    image = getattr(data, name)()
    height, width = image.shape[:2]
    scale = SOURCE_SCALES[name]
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=interpolation)


def grid_cells(name: str, image: np.ndarray) -> list[Cell]:
    """The photo's non-overlapping 256x160 cells (the grid centred), those with content only."""
    height, width = image.shape[:2]
    columns, rows = width // GT_W, height // GT_H
    x0, y0 = (width - columns * GT_W) // 2, (height - rows * GT_H) // 2
    cells = [Cell(name, x0 + i * GT_W, y0 + j * GT_H) for j in range(rows) for i in range(columns)]
    return [c for c in cells if cv2.cvtColor(cut(c, image), cv2.COLOR_RGB2GRAY).std() >= MIN_CONTENT_STD]


def cut(cell: Cell, image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[cell.y : cell.y + GT_H, cell.x : cell.x + GT_W])


def deal(sources: dict[str, np.ndarray]) -> dict[str, list[Cell]]:
    """Every photo's cells, shuffled with a fixed seed, dealt to test, val and train by QUOTAS."""
    splits: dict[str, list[Cell]] = {split: [] for split in SPLITS}
    for number, (name, image) in enumerate(sources.items()):
        cells = grid_cells(name, image)
        order = np.random.default_rng((SEED, 1000 + number)).permutation(len(cells))
        shuffled = [cells[i] for i in order]
        n_test, n_val, n_train = QUOTAS[name]
        assert len(shuffled) >= n_test + n_val, (name, len(shuffled))
        splits["test"] += shuffled[:n_test]
        splits["val"] += shuffled[n_test : n_test + n_val]
        splits["train"] += shuffled[n_test + n_val :][:n_train]
    return splits


def darken(gt: np.ndarray, mean: float) -> np.ndarray:
    """``255 * (gt / 255) ** gamma`` with gamma chosen (by bisection) so the mean is ``mean``."""
    x = gt.astype(np.float64) / 255.0
    low, high = 0.05, 20.0
    for _ in range(60):
        gamma = (low + high) / 2
        if (x**gamma).mean() * 255.0 > mean:
            low = gamma
        else:
            high = gamma
    return np.clip(np.rint(255.0 * x**gamma), 0, 255).astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG", optimize=True)
    return path


def output_paths(split: str, number: int) -> tuple[Path, Path | None]:
    """(degraded input path, ground-truth path or None) of one image."""
    stem = f"{number:05d}"
    if split == "test":
        return OUT_DIR / "test" / f"test_{stem}.png", None
    input_prefix = "val" if split == "val" else "gt"  # the competition names train inputs gt_*
    return OUT_DIR / split / split / f"{input_prefix}_{stem}.png", OUT_DIR / split / "gt" / f"gt_{stem}.png"


def write_images(sources: dict[str, np.ndarray], splits: dict[str, list[Cell]]) -> list[Path]:
    written: list[Path] = []
    index = 0
    for split in SPLITS:
        for number, cell in enumerate(splits[split], start=1):
            rng = np.random.default_rng((SEED, index))
            index += 1
            gt = darken(cut(cell, sources[cell.source]), rng.uniform(*TARGET_MEAN))
            input_path, gt_path = output_paths(split, number)
            written.append(save_png(FORWARD.degrade(gt, rng), input_path))
            if gt_path is not None:
                written.append(save_png(gt, gt_path))
    return written


def write_scenes(splits: dict[str, list[Cell]]) -> Path:
    """``train/scenes.json``: which photo each training pair is cut from, so training holds back whole photos."""
    path = OUT_DIR / "train" / "scenes.json"
    scenes = {output_paths("train", n)[0].stem: cell.source for n, cell in enumerate(splits["train"], start=1)}
    path.write_text(json.dumps(scenes, indent=1) + "\n")
    return path


def write_sample_submission(n_test: int) -> Path:
    """An all-zero submission with one row per test image, sorted by ID."""
    path = OUT_DIR / "sample_submission.csv"
    header = ",".join(["ID"] + [f"pixel_{i}" for i in range(SUBMISSION_COLUMNS)])
    zeros = ",".join(["0"] * SUBMISSION_COLUMNS)
    ids = sorted(output_paths("test", n)[0].stem.replace("test_", "gt_") for n in range(1, n_test + 1))
    path.write_bytes(("\n".join([header] + [f"{i},{zeros}" for i in ids]) + "\n").encode("ascii"))
    return path


def remove_previous() -> None:
    for folder in ("test", "val/val", "val/gt", "train/train", "train/gt"):
        for old in (OUT_DIR / folder).glob("*.png"):
            old.unlink()


def main() -> None:
    sources = {name: load_source(name) for name in SOURCE_SCALES}
    splits = deal(sources)
    remove_previous()
    written = write_images(sources, splits) + [write_sample_submission(len(splits["test"])), write_scenes(splits)]
    total = sum(path.stat().st_size for path in written)
    counts = ", ".join(f"{split} {len(cells)}" for split, cells in splits.items())
    print(f"wrote {len(written)} files ({total:,} bytes) under {OUT_DIR}: {counts}")


if __name__ == "__main__":
    main()
