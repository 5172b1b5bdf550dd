"""Compose docs/example.png: inputs of a real run beside its 4x outputs and the ground truth.

How the picture in the README was made (2-core AMD EPYC, 2026-12-07)::

    .venv/bin/python benchmarks/heldout.py --out build/heldout/competition   # 18 held-out pairs, 256x160 -> 1024x640
    STORAGE_URL=/tmp/exrun .venv/bin/producer enqueue build/heldout/competition/   # the default preset, embedded
    .venv/bin/python docs/make_example.py /tmp/exrun/runs/<run> build/heldout/competition \
        test_00009 test_00004 -o docs/example.png

Each row is one input: the 256x160 input enlarged 4x by nearest neighbour (every input pixel a 4x4
block), the run's own 4x output (``runs/<run>/sr/<stem>.png``, untouched), and the 1024x640 ground
truth; above them, the competition PSNR of the output and of bicubic x4 of the same input. The panels
are shown at half size, and below them the 256x160 window with the most detail in the ground truth (the
white box), enlarged 2x by nearest neighbour. Nothing is brightened: the data is as dark as the
competition's (mean about 41 of 255). The photos' credits and licences are printed from the dataset's
heldout.json and the corpus manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from workers.ops.metrics import competition_scores  # noqa: E402

GAP, LABEL = 8, 26
CROP = (256, 160)  # width, height of the 1:1 crop, in output pixels


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def interesting_crop(truth: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the CROP window with the most detail (grey gradient energy) in the ground truth."""
    grey = cv2.cvtColor(truth, cv2.COLOR_RGB2GRAY).astype(np.float32)
    energy = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    w, h = CROP
    summed = cv2.boxFilter(energy, -1, (w, h), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    summed = summed[: truth.shape[0] - h + 1, : truth.shape[1] - w + 1]
    y, x = np.unravel_index(int(np.argmax(summed)), summed.shape)
    return int(x), int(y)


def row(stem: str, run: Path, dataset: Path, font: ImageFont.ImageFont) -> Image.Image:
    source = read(dataset / "test" / f"{stem}.png")
    output = read(run / "sr" / f"{stem}.png")
    truth = read(dataset / "val" / "gt" / f"gt_{stem.split('_', 1)[1]}.png")
    nearest = np.repeat(np.repeat(source, 4, axis=0), 4, axis=1)
    bicubic = cv2.resize(source, (source.shape[1] * 4, source.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    ours, _ = competition_scores(output, truth)
    base, _ = competition_scores(bicubic, truth)
    labels = [
        f"input {source.shape[1]}x{source.shape[0]} (nearest-neighbour x4)",
        f"output 4x, default preset: {ours:.2f} dB (bicubic {base:.2f})",
        f"ground truth {truth.shape[1]}x{truth.shape[0]}",
    ]
    x0, y0 = interesting_crop(truth)
    w, h = CROP
    half = (output.shape[1] // 2, output.shape[0] // 2)
    width = 3 * half[0] + 2 * GAP
    canvas = Image.new("RGB", (width, LABEL + half[1] + GAP + 2 * h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, label) in enumerate(zip((nearest, output, truth), labels, strict=True)):
        left = i * (half[0] + GAP)
        draw.text((left, 4), label, fill="black", font=font)
        small = Image.fromarray(image).resize(half, Image.Resampling.BOX)
        canvas.paste(small, (left, LABEL))
        box = (left + x0 // 2, LABEL + y0 // 2, left + (x0 + w) // 2, LABEL + (y0 + h) // 2)
        draw.rectangle(box, outline="white")
        crop = Image.fromarray(np.ascontiguousarray(image[y0 : y0 + h, x0 : x0 + w]))
        canvas.paste(crop.resize((2 * w, 2 * h), Image.Resampling.NEAREST), (left, LABEL + half[1] + GAP))
    return canvas


def credits(dataset: Path, stems: list[str], corpus: Path) -> list[str]:
    """Who made each shown photo and under which licence, from heldout.json and the corpus manifest."""
    try:
        made = {
            v["name"].split("_", 1)[1]: v["photo"] for v in json.loads((dataset / "heldout.json").read_text())["val"]
        }
        photos = {
            p["file"].removeprefix("photos/"): p for p in json.loads((corpus / "manifest.json").read_text())["photos"]
        }
    except (OSError, KeyError, ValueError):
        return []
    lines = []
    for stem in stems:
        photo = photos.get(made.get(stem.split("_", 1)[1], ""), {})
        if photo:
            lines.append(
                f"{stem}: {photo['file']}, {photo.get('credit', '?')}, {photo.get('licence', '?')}, "
                f"{photo.get('credit_url', '')}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="runs/<run> folder of a finished local run")
    parser.add_argument("dataset", type=Path, help="dataset root with test/ and val/gt/ (benchmarks/heldout.py)")
    parser.add_argument("stems", nargs="+", help="inputs to show, e.g. test_00009")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/example.png"))
    parser.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "lowlight-sr" / "photo-corpus")
    args = parser.parse_args(argv)
    font = ImageFont.load_default(size=17)
    rows = [row(stem, args.run, args.dataset, font) for stem in args.stems]
    canvas = Image.new("RGB", (rows[0].width, sum(r.height for r in rows) + GAP * 2 * (len(rows) - 1)), "white")
    top = 0
    for part in rows:
        canvas.paste(part, (0, top))
        top += part.height + 2 * GAP
    canvas.save(args.output, optimize=True)
    for line in credits(args.dataset, args.stems, args.corpus):
        print(line)
    print(f"wrote {args.output} ({canvas.width}x{canvas.height}, {args.output.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
