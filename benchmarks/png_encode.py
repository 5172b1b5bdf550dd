"""PNG encoding of 4x outputs: the pipeline's encoder against OpenCV, Pillow and a cheaper filter.

A GPU worker encodes every 4x output before storing it; at tens of images/s per card that is cores of
work, done on the I/O threads. For the same images (4x bicubic of the synthetic inputs, or the
shipped model's outputs with ``--model``), each encoder's ms per image on one thread, images/s on
1..N threads at once (zlib and numpy release the GIL), file size, and whether its bytes equal ours
or only its pixels.

    python -m benchmarks.png_encode --size 256x160 --count 8
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks import harness, machine, workload
from benchmarks.harness import fmt, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.parser(__file__, __doc__)
    harness.add_common_arguments(parser, count=8)
    parser.add_argument("--model", action="store_true", help="encode the shipped model's outputs (else bicubic x4)")
    return harness.parse_common(parser, argv)


def up_filtered_png(rgb: Any) -> bytes:
    """Our filter (PNG's 'Up': one subtraction per byte) written whole, in one IDAT: what banding costs."""
    import numpy as np

    from workers.io.imageio import _png_chunk

    height, width, _ = rgb.shape
    rows = rgb.reshape(height, 3 * width)
    lines = np.empty((height, 1 + 3 * width), np.uint8)
    lines[:, 0] = 2
    lines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])
    header = _png_chunk(b"IHDR", __import__("struct").pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(lines, 1)) + _png_chunk(b"IEND", b"")


def encoders() -> list[tuple[str, Callable[[Any], bytes]]]:
    import cv2
    from PIL import Image

    from workers.io.imageio import encode_png

    def opencv(rgb: Any) -> bytes:
        return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()

    def pillow(rgb: Any) -> bytes:
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, "PNG", compress_level=1)
        return out.getvalue()

    return [("ours: workers.io.imageio.encode_png (Up filter, zlib level 1, banded)", encode_png),
            ("OpenCV imencode, level 1", opencv), ("Pillow, compress_level 1", pillow),
            ("Up filter, zlib level 1, whole image in one IDAT", up_filtered_png)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import cv2
    import numpy as np

    from workers.io.imageio import decode_png, encode_png

    bench = harness.start("cpu", args.torch_threads)  # the encoders run on the host; --device is the model's
    width, height = args.size
    images = workload.synthetic_images(args.count, width, height)
    if args.model:
        from workers.ops.upscale import load_upscaler

        upscaler = load_upscaler(harness.SHIPPED_MODEL, args.device)
        outputs = [upscaler.upscale(image[None])[0] for image in images]
    else:
        outputs = [cv2.resize(image, (4 * width, 4 * height), interpolation=cv2.INTER_CUBIC) for image in images]
    reference = [encode_png(image) for image in outputs]
    thread_counts = sorted({1, 2, machine.core_count(), 2 * machine.core_count()})
    rows = []
    base: float | None = None
    for label, encode in encoders():
        log(label)
        encoded = [encode(image) for image in outputs]  # warm-up, and what is checked
        started = time.perf_counter()
        for image in outputs:
            encode(image)
        ms = 1000 * (time.perf_counter() - started) / len(outputs)
        base = base or ms
        rates = []
        for threads in thread_counts:
            with ThreadPoolExecutor(threads) as pool:
                started = time.perf_counter()
                list(pool.map(encode, outputs * threads))
                rates.append(fmt(len(outputs) * threads / (time.perf_counter() - started)))
        same_bytes = encoded == reference
        same_pixels = all(np.array_equal(decode_png(data), image) for data, image in zip(encoded, outputs, strict=True))
        size = sum(map(len, encoded)) / sum(map(len, reference))
        rows.append((label, fmt(ms), f"{base / ms:.2f}x", *rates, f"{size:.0%}",
                     "bytes" if same_bytes else "pixels" if same_pixels else "NO"))
        harness.record(args, f"PNG encode, {label.split(':')[0].split(',')[0]}", ms, "ms/image",
                      f"{4 * width}x{4 * height}; {size:.0%} of our size; identical in {rows[-1][-1]}")
    print(f"## PNG encoding of {args.count} 4x outputs {4 * width}x{4 * height} "
          f"({'the shipped model' if args.model else 'bicubic x4'})\n")
    print(harness.markdown_table(("encoder", "ms/image, 1 thread", "vs ours",
                                 *(f"images/s, {t} threads" for t in thread_counts), "size vs ours", "identical in"),
                                rows))
    print()
    print(bench.machine_table("none", f"{4 * width}x{4 * height} outputs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
