"""Competition-like datasets from the photo corpus, for comparisons the shipped models never trained on.

The real competition pairs are 256x160 inputs of 1024x640 camera photos. This script cuts such pairs
from the corpus (``make corpus``) and writes each set in the layout of ``dataset/`` (so ``producer
calibrate``, ``train``, ``evaluate`` and ``enqueue`` run on it as they do on the sample):

* ``val/``: the **held-out comparison**. Whole 1024x640 cells of the 16 photos that every pretraining on
  the corpus holds back (``split_photos``: a fixed slice by hashing the names; the shipped models and the
  capacity ladder never trained on them), at most two cells per photo; or, with ``--val-from training``,
  cells of 16 other training-split photos, for judging a fine-tune on pictures it never saw and its own
  held-back photos do not include. ``test/`` holds the same inputs, or ``--test-count`` new ones
  (``sample_submission.csv`` names them).
* ``train/``: **26 pairs of 7 scenes**, the shape of a small user dataset: up to four 1024x640 crops at
  random places (they may overlap) of each of 7 photos of the corpus's training split; ``train/scenes.json`` says which scene each pair is cut from.

Each target is a photo box-downscaled by the largest integer factor that keeps a 1024x640 cell (portrait
photos turned on their side first), the cell brought to a mean brightness drawn from the competition's
(22-65 of 255, median 41) by scaling its light, and its input made with a forward model: the competition's
(g = 2.49, sigma2 = 3.1, box, floor), or another one (``--gain``, ``--read-variance``), for a dataset whose
pairs teach the shipped model something it does not know. Deterministic for a seed.

    .venv/bin/python -m benchmarks.heldout --out build/heldout/competition
    .venv/bin/python -m benchmarks.heldout --out build/heldout/noisier --gain 4.0 --read-variance 8.0
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import harness
from benchmarks.harness import log
from workers.io.storage import LocalStorage
from workers.ops.degrade import COMPETITION_BRIGHTNESS, ForwardModel
from workers.training.photos import PhotoListing, box_downscale, list_photos, split_photos

TARGET = (1024, 640)  # width, height of a target
SCALE = 4
HOLDOUT_SHARE, HOLDOUT_MOST = 0.1, 16  # TrainConfig's defaults: the photos every pretraining holds back
VAL_CELLS_PER_PHOTO = 2
TRAIN_SCENES, TRAIN_CELLS_PER_SCENE, TRAIN_PAIRS = 7, 4, 26
MIN_CONTENT_STD = 10.0  # grey standard deviation (of 255) below which a cell is too flat to score
SEED = 20261207


def prepared(photo: np.ndarray) -> np.ndarray:
    """A portrait photo turned on its side, box-downscaled by the largest factor that still holds one cell."""
    if photo.shape[0] > photo.shape[1]:
        photo = np.ascontiguousarray(np.rot90(photo))
    width, height = TARGET
    return box_downscale(photo, max(1, min(photo.shape[1] // width, photo.shape[0] // height)))


def has_content(cell: np.ndarray) -> bool:
    return float((cell.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).std()) >= MIN_CONTENT_STD


def cells(photo: np.ndarray) -> list[np.ndarray]:
    """The prepared photo's non-overlapping 1024x640 cells with content (a centred grid)."""
    photo = prepared(photo)
    width, height = TARGET
    columns, rows = photo.shape[1] // width, photo.shape[0] // height
    x0, y0 = (photo.shape[1] - columns * width) // 2, (photo.shape[0] - rows * height) // 2
    found = [
        photo[y0 + j * height : y0 + (j + 1) * height, x0 + i * width : x0 + (i + 1) * width]
        for j in range(rows)
        for i in range(columns)
    ]
    return [np.ascontiguousarray(cell) for cell in found if has_content(cell)]


def random_cells(photo: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to ``count`` 1024x640 crops with content at random places of the prepared photo (they may
    overlap: a user's pairs of one scene often do)."""
    photo = prepared(photo)
    width, height = TARGET
    found: list[np.ndarray] = []
    for _ in range(8 * count):
        if len(found) == count:
            break
        y, x = int(rng.integers(photo.shape[0] - height + 1)), int(rng.integers(photo.shape[1] - width + 1))
        cell = photo[y : y + height, x : x + width]
        if has_content(cell):
            found.append(np.ascontiguousarray(cell))
    return found


def dark_pair(cell: np.ndarray, forward: ForwardModel, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(input, target): the cell's light scaled to a drawn competition brightness, then degraded."""
    gain = COMPETITION_BRIGHTNESS.draw(rng) / max(float(cell.mean()), 1.0)
    target = np.clip(np.rint(cell.astype(np.float32) * gain), 0, 255).astype(np.uint8)
    return forward.degrade(target, rng), target


def load(listing: PhotoListing, index: int) -> np.ndarray:
    with Image.open(io.BytesIO(listing.storage.get(listing.keys[index]))) as image:
        return np.asarray(image.convert("RGB"))


def save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def build(
    corpus: Path, out: Path, forward: ForwardModel, seed: int, val_from: str = "heldout", test_count: int = 0
) -> dict[str, object]:
    """Write the dataset (see the module's docstring). ``val_from``: ``heldout`` (the photos every pretraining
    holds back) or ``training`` (cells of training-split photos other than the train scenes: new pictures for a
    fine-tune, and none of them among the photos its training holds back). ``test_count``: that many test
    inputs cut at random from the val photos (default: the val inputs themselves)."""
    listing = list_photos(
        LocalStorage(corpus / "photos"), str(corpus / "photos"), (LocalStorage(corpus), "manifest.json")
    )
    training, held = split_photos(listing, HOLDOUT_SHARE, HOLDOUT_MOST)
    rng = np.random.default_rng(seed)
    # The user's scenes: photos of the training split with room for several cells, in a fixed order.
    ranked = sorted(training, key=lambda i: hashlib.sha1(f"{seed}:{listing.keys[i]}".encode()).hexdigest())
    by_scene: list[tuple[str, list[np.ndarray]]] = []
    for index in ranked:
        if len(by_scene) == TRAIN_SCENES:
            break
        photo = load(listing, index)
        if min(photo.shape[:2]) < 1.2 * TARGET[1]:
            continue  # room for one crop only: a scene of one pair
        found = random_cells(photo, TRAIN_CELLS_PER_SCENE, rng)
        if len(found) >= 2:
            by_scene.append((listing.keys[index], found))
    while sum(len(found) for _, found in by_scene) > TRAIN_PAIRS:  # the scene with the most cells gives one up
        max(by_scene, key=lambda scene: len(scene[1]))[1].pop()
    train = [(key, *dark_pair(cell, forward, rng)) for key, found in by_scene for cell in found]
    scenes = {key for key, _ in by_scene}
    val_photos = held if val_from == "heldout" else [i for i in reversed(ranked) if listing.keys[i] not in scenes]
    val: list[tuple[str, np.ndarray, np.ndarray]] = []
    for index in val_photos:
        if val_from != "heldout" and len({key for key, _, _ in val}) >= len(held):
            break
        for cell in cells(load(listing, index))[:VAL_CELLS_PER_PHOTO]:
            val.append((listing.keys[index], *dark_pair(cell, forward, rng)))
    tests = [inp for _, inp, _ in val]
    if test_count:
        photos = sorted({key for key, _, _ in val})
        tests = [
            dark_pair(
                random_cells(load(listing, listing.keys.index(photos[n % len(photos)])), 1, rng)[0], forward, rng
            )[0]
            for n in range(test_count)
        ]
    for number, (_, inp, target) in enumerate(val, 1):
        save(inp, out / "val" / "val" / f"val_{number:05d}.png")
        save(target, out / "val" / "gt" / f"gt_{number:05d}.png")
    for number, inp in enumerate(tests, 1):
        save(inp, out / "test" / f"test_{number:05d}.png")
    scene_of = {}
    for number, (key, inp, target) in enumerate(train, 1):
        save(inp, out / "train" / "train" / f"gt_{number:05d}.png")
        save(target, out / "train" / "gt" / f"gt_{number:05d}.png")
        scene_of[f"gt_{number:05d}"] = key
    (out / "train" / "scenes.json").write_text(json.dumps(scene_of, indent=1) + "\n")
    columns = TARGET[0] * TARGET[1] // 8
    header = "ID," + ",".join(f"pixel_{i}" for i in range(columns))
    zeros = ",".join("0" for _ in range(columns))
    rows = [f"gt_{n:05d},{zeros}" for n in range(1, len(tests) + 1)]
    (out / "sample_submission.csv").write_text("\n".join([header, *rows]) + "\n")
    about = {
        "corpus_manifest_sha256": listing.manifest_sha256,
        "photos_names_sha256": listing.names_sha256,
        "forward_model": forward.to_dict(),
        "seed": seed,
        "val_from": val_from,
        "val": [{"name": f"val_{n:05d}", "photo": key} for n, (key, _, _) in enumerate(val, 1)],
        "train_scenes": sorted(set(scene_of.values())),
        "train_pairs": len(train),
        "test_inputs": len(tests),
    }
    (out / "heldout.json").write_text(json.dumps(about, indent=1) + "\n")
    return about


def val_pairs(dataset: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, input, target) of a dataset's val/ split, in name order."""
    found = []
    for inp in sorted((dataset / "val" / "val").glob("*.png")):
        gt = dataset / "val" / "gt" / inp.name.replace("val_", "gt_")
        found.append((inp.stem, np.asarray(Image.open(inp).convert("RGB")), np.asarray(Image.open(gt).convert("RGB"))))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__file__, __doc__)
    parser.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "lowlight-sr" / "photo-corpus")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gain", type=float, default=ForwardModel().gain)
    parser.add_argument("--read-variance", type=float, default=ForwardModel().read_variance)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--val-from",
        choices=("heldout", "training"),
        default="heldout",
        help="heldout: the photos every pretraining holds back (comparing models); training: other "
        "training-split photos (a fine-tune's new pictures, apart from the photos it holds back)",
    )
    parser.add_argument(
        "--test-count", type=int, default=0, help="test inputs cut from the val photos (0: the val inputs)"
    )
    args = parser.parse_args(argv)
    forward = ForwardModel(gain=args.gain, read_variance=args.read_variance)
    about = build(args.corpus, args.out, forward, args.seed, args.val_from, args.test_count)
    log(
        f"{args.out}: {len(about['val'])} held-out pairs of {len({v['photo'] for v in about['val']})} photos; "  # type: ignore[union-attr]
        f"{about['train_pairs']} training pairs of {len(about['train_scenes'])} scenes"
    )  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
