"""A self-contained static HTML report of one run: settings, progress, timings, images, failures.

:func:`collect_report_data` reads a run from storage into a :class:`ReportData` (thumbnails already
encoded, scores already computed); :func:`render_report` turns that into one HTML document that
references nothing outside itself: images are ``data:`` URIs, charts are inline SVG generated here,
CSS is inline, there is no JavaScript, and a Content-Security-Policy forbids fetching anything.
Every string a user controls (file names, error texts, sources, pipeline values) is escaped.

PSNR is the competition's (on the stored submission vector, every 8th greyscale value of the 4x
output); SSIM is that of the full-resolution greyscale images, as in ``producer evaluate``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from PIL import Image

from workers.errors import ConfigError, ObjectNotFoundError, PermanentImageError
from workers.imageio import DecodeLimits, decode_image, decode_png
from workers.metrics import competition_scores
from workers.runs import RunKeys, RunManifest, RunProgress, load_manifest, now_iso, stem
from workers.storage import Storage, fetch_in_order
from workers.submission import grey_subsample, submission_id

THUMB_MAX = 384  # longest edge of an embedded thumbnail, in pixels
CROP_MAX = 128  # largest zoomed crop of the 4x output, in output pixels
DISPLAY_WIDTH = 256  # CSS width of every image panel
JPEG_QUALITY = 85
_LONG_TEXT = 160  # settings longer than this are summarised
THROUGHPUT_BINS = 30  # about this many intervals on the throughput chart
_NICE_BIN_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def truth_by_name(names: Iterable[str], folder: Path) -> dict[str, Path]:
    """Ground truth for ``names`` from ``folder``, matched by submission ID (``val_1.png`` -> ``gt_1.*``),
    as ``producer evaluate`` matches them; names without one are left out.

    Raises:
        ConfigError: ``folder`` is not a directory.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a directory")
    by_id = {p.stem: p for p in folder.iterdir() if p.is_file()}
    return {name: by_id[submission_id(name)] for name in names if submission_id(name) in by_id}


# -- data -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedImage:
    """An encoded thumbnail, ready to embed as a ``data:`` URI."""

    mime: str
    data: bytes
    width: int
    height: int

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclass(frozen=True)
class Score:
    """One image against its ground truth; ``psnr`` is None (with a ``note``) when it cannot be scored."""

    name: str
    psnr: float | None
    ssim: float | None
    note: str = ""


@dataclass(frozen=True)
class ImageReport:
    name: str
    state: str  # an ImageState value
    score: Score | None
    seconds: Mapping[str, float]  # stage -> seconds, from the meta files
    input_size: tuple[int, int] | None  # (width, height)
    output_size: tuple[int, int] | None
    panels: Mapping[str, EmbeddedImage]  # "input", "denoised", "sr", "crop_input", "crop_sr"
    notes: tuple[str, ...] = ()  # why a panel is missing


@dataclass(frozen=True)
class Failure:
    name: str
    stage: str
    reason: str
    at: str = ""


@dataclass(frozen=True)
class StageTiming:
    stage: str
    count: int
    p50: float
    p95: float
    total: float


@dataclass(frozen=True)
class ReportData:
    run_id: str
    source: str
    created_at: str
    model: str  # what the producer asked for ("file:..." or "hf:repo/file@rev")
    expected_columns: int | None
    seed_compat: bool
    pipeline: Mapping[str, Any]  # the manifest's pipeline dict, rendered generically
    models: tuple[tuple[str, str, str], ...]  # distinct (source, sha256, device) the upscaler recorded
    code_versions: tuple[str, ...]
    counts: Mapping[str, int]  # done, failed, pending, denoised (of pending), rejected, total
    summary: Mapping[str, Any] | None  # summary.json, when the run was aggregated
    wall_seconds: float | None  # first start to last finish
    timings: tuple[StageTiming, ...]
    throughput_bin_s: int
    throughput: tuple[tuple[float, int], ...]  # (interval start in s since first start, images finished)
    scores: tuple[Score, ...]  # every scored image, worst PSNR first
    images: tuple[ImageReport, ...]  # the shown ones, in display order
    omitted: int  # images not shown (max_images)
    failures: tuple[Failure, ...]
    generated_at: str = field(default_factory=now_iso)


# -- collecting -------------------------------------------------------------------------------------


def collect_report_data(
    storage: Storage,
    source: Storage,
    run_id: str,
    truth: Mapping[str, Path] | None = None,
    max_images: int = 60,
    limits: DecodeLimits | None = None,
    threads: int = 4,
) -> ReportData:
    """Read run ``run_id`` from ``storage`` (inputs from ``source``) into a :class:`ReportData`.

    ``truth`` maps input names to ground-truth image paths; with it, images are scored and shown
    worst PSNR first, else in input order. At most ``max_images`` images are shown. ``limits``
    bound the decoding of inputs and ground truth (default: the settings' defaults). Per-image
    objects are read and scored ``threads`` at a time, in order.

    Raises:
        RunNotFoundError: no manifest for ``run_id``.
        InvalidKeyError: ``run_id`` is not a valid run id.
        TransientError: a storage could not be reached.
        OSError: a ground-truth file could not be read.
    """
    limits = limits or DecodeLimits.from_settings()
    manifest = load_manifest(storage, run_id)
    keys = RunKeys(run_id)
    progress = RunProgress.read(storage, run_id)
    metas = _read_metas(storage, keys, threads)
    markers = _read_failure_markers(storage, keys, manifest, progress, threads)
    scored = [n for n in manifest.names if truth and n in truth and stem(n) in progress.done]
    scoring = fetch_in_order(lambda name: _score_image(storage, keys, name, truth[name], limits), scored, threads)
    scores = dict(zip(scored, scoring, strict=True))
    order = _display_order(manifest.names, scores)
    shown = order[: max(max_images, 0)]
    starts, finishes = _start_and_finish_times(metas, markers)
    bin_s, throughput = _throughput(starts, finishes)
    upscale_metas = [m for stage, m in _each_meta(metas) if stage == "upscale"]
    return ReportData(
        run_id=manifest.run_id,
        source=manifest.source,
        created_at=manifest.created_at,
        model=manifest.model,
        expected_columns=manifest.expected_columns,
        seed_compat=manifest.pipeline.channel_order == "bgr" and manifest.pipeline.resize_multiple == 8,
        pipeline=manifest.pipeline.to_dict(),
        models=tuple(sorted({(str(m.get("model", "")), str(m.get("model_sha256", "")), str(m.get("device", "")))
                             for m in upscale_metas})),
        code_versions=tuple(sorted({str(m["code_version"]) for _, m in _each_meta(metas) if "code_version" in m})),
        counts=_counts(manifest, progress),
        summary=_read_json(storage, keys.summary),
        wall_seconds=(max(finishes) - min(starts)) if starts and finishes else None,
        timings=_stage_timings(metas),
        throughput_bin_s=bin_s,
        throughput=throughput,
        scores=tuple(sorted((s for s in scores.values() if s.psnr is not None), key=lambda s: s.psnr or 0.0)),
        images=tuple(_image_report(storage, source, keys, name, progress, metas, scores.get(name), limits)
                     for name in shown),
        omitted=len(order) - len(shown),
        failures=_failures(storage, keys, manifest, markers),
    )


def _read_json(storage: Storage, key: str) -> Any:
    """The parsed object, or None when it does not exist."""
    try:
        return json.loads(storage.get(key))
    except ObjectNotFoundError:
        return None


Metas = Mapping[str, Mapping[str, Mapping[str, Any]]]  # stem -> stage -> the meta file's fields


def _read_metas(storage: Storage, keys: RunKeys, threads: int) -> Metas:
    """Every ``meta/<stem>.<stage>.json`` of the run (one listing, one read each)."""
    metas: dict[str, dict[str, Any]] = defaultdict(dict)
    found = []
    for key in storage.list(keys.prefix("meta")):
        image_stem, _, stage = PurePosixPath(key).name.removesuffix(".json").rpartition(".")
        if image_stem and key.endswith(".json"):
            found.append((key, image_stem, stage))
    contents = fetch_in_order(lambda item: storage.get(item[0]), found, threads)
    for (_, image_stem, stage), data in zip(found, contents, strict=True):
        metas[image_stem][stage] = json.loads(data)
    return metas


def _each_meta(metas: Metas) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(stage, meta) of every meta file."""
    return ((stage, meta) for by_stage in metas.values() for stage, meta in by_stage.items())


def _read_failure_markers(
    storage: Storage, keys: RunKeys, manifest: RunManifest, progress: RunProgress, threads: int
) -> dict[str, Failure]:
    """``failed/<stem>.json`` of every failed input, by input name."""
    failed = [name for name in manifest.names if stem(name) in progress.failed]
    records = fetch_in_order(lambda name: _read_json(storage, keys.failed(name)) or {}, failed, threads)
    return {
        name: Failure(name, str(record.get("stage", "?")), str(record.get("reason", "")), str(record.get("at", "")))
        for name, record in zip(failed, records, strict=True)
    }


def _failures(storage: Storage, keys: RunKeys, manifest: RunManifest, markers: Mapping[str, Failure]) -> tuple[Failure, ...]:
    """Per-image failures (live), listing rejections, and the aggregator's width mismatches."""
    aggregated = _read_json(storage, keys.failures) or []
    mismatches = [Failure(str(f.get("name", "")), "aggregate", str(f.get("reason", "")))
                  for f in aggregated if f.get("stage") == "aggregate"]
    rejected = [Failure(name, "listing", reason) for name, reason in manifest.rejected]
    return (*markers.values(), *mismatches, *rejected)


def _counts(manifest: RunManifest, progress: RunProgress) -> dict[str, int]:
    by_state = {state.value: n for state, n in progress.counts(manifest.names).items()}
    return {
        "done": by_state["done"],
        "failed": by_state["failed"],
        "pending": by_state["pending"] + by_state["denoised"],
        "denoised": by_state["denoised"],
        "rejected": len(manifest.rejected),
        "total": manifest.total,
    }


def _display_order(names: Sequence[str], scores: Mapping[str, Score]) -> list[str]:
    """Scored images worst PSNR first, then the rest in input order."""
    scored = sorted((n for n in names if scores.get(n) and scores[n].psnr is not None),
                    key=lambda n: scores[n].psnr or 0.0)
    chosen = set(scored)
    return scored + [n for n in names if n not in chosen]


# -- scoring ----------------------------------------------------------------------------------------


def _score_image(storage: Storage, keys: RunKeys, name: str, truth_path: Path, limits: DecodeLimits) -> Score:
    """Competition PSNR of the stored row and SSIM of the 4x image against ``truth_path``."""
    output, row = _get_png(storage, keys.sr(name)), _get_row(storage, keys.row(name))
    if output is None or row is None:
        return Score(name, None, None, "no output to score")
    try:
        truth = decode_image(truth_path.read_bytes(), truth_path.name, limits)
    except PermanentImageError as exc:
        return Score(name, None, None, f"ground truth unreadable: {exc.reason}")
    if output.shape != truth.shape or row.shape != grey_subsample(truth).shape:
        return Score(name, None, None, f"output {_size(output)} differs from ground truth {_size(truth)}: not scored")
    return Score(name, *competition_scores(output, truth, row))


def _get_row(storage: Storage, key: str) -> np.ndarray | None:
    try:
        line = storage.get(key).decode()
    except ObjectNotFoundError:
        return None
    return np.array(next(csv.reader([line]))[1:], dtype=np.int64)


def _get_png(storage: Storage, key: str) -> np.ndarray | None:
    try:
        return decode_png(storage.get(key))
    except ObjectNotFoundError:
        return None


def _size(rgb: np.ndarray) -> str:
    return f"{rgb.shape[1]}x{rgb.shape[0]}"


# -- timing -----------------------------------------------------------------------------------------


def _stage_timings(metas: Metas) -> tuple[StageTiming, ...]:
    by_stage: dict[str, list[float]] = defaultdict(list)
    for stage, meta in _each_meta(metas):
        if isinstance(meta.get("seconds"), int | float):
            by_stage[stage].append(float(meta["seconds"]))
    return tuple(
        StageTiming(stage, len(v), float(np.percentile(v, 50)), float(np.percentile(v, 95)), math.fsum(v))
        for stage, v in sorted(by_stage.items(), key=lambda item: _stage_rank(item[0]))
    )


def _stage_rank(stage: str) -> tuple[int, str]:
    known = ("denoise", "upscale")
    return (known.index(stage) if stage in known else len(known), stage)


def _timestamp(value: object) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _start_and_finish_times(metas: Metas, markers: Mapping[str, Failure]) -> tuple[list[float], list[float]]:
    """Epoch seconds: starts (denoise end minus its duration) and finishes (upscaled or failed).

    The stages record ``at`` to the millisecond.
    """
    starts, finishes = [], []
    for stage, meta in _each_meta(metas):
        at = _timestamp(meta.get("at"))
        if at is None:
            continue
        if stage == "denoise":
            starts.append(at - float(meta.get("seconds", 0.0)))
        elif stage == "upscale":
            finishes.append(at)
    failed_at = [t for t in (_timestamp(f.at) for f in markers.values()) if t is not None]
    return starts + failed_at, finishes + failed_at


def _throughput(starts: Sequence[float], finishes: Sequence[float]) -> tuple[int, tuple[tuple[float, int], ...]]:
    """Images finished per interval, from the first start; the interval is a round number of seconds."""
    if not starts or not finishes:
        return 1, ()
    origin = min(starts)
    span = max(max(finishes) - origin, 1.0)
    bin_s = next((b for b in _NICE_BIN_S if span / b <= THROUGHPUT_BINS), _NICE_BIN_S[-1])
    counts = [0] * (int(span // bin_s) + 1)
    for t in finishes:
        counts[min(max(int((t - origin) // bin_s), 0), len(counts) - 1)] += 1
    return bin_s, tuple((i * float(bin_s), n) for i, n in enumerate(counts))


# -- images -----------------------------------------------------------------------------------------


def _image_report(
    storage: Storage,
    source: Storage,
    keys: RunKeys,
    name: str,
    progress: RunProgress,
    metas: Metas,
    score: Score | None,
    limits: DecodeLimits,
) -> ImageReport:
    notes = []
    original, why = _load_input(source, name, limits)
    if why:
        notes.append(f"input: {why}")
    denoised, output = _get_png(storage, keys.denoised(name)), _get_png(storage, keys.sr(name))
    panels = {"input": original, "denoised": denoised, "sr": output}
    if output is not None:
        crop_input, crop_sr = _crops(original, output)
        panels |= {"crop_input": crop_input, "crop_sr": crop_sr}
    seconds = {stage: float(m["seconds"]) for stage, m in metas.get(stem(name), {}).items()
               if isinstance(m.get("seconds"), int | float)}
    return ImageReport(
        name=name,
        state=progress.state(name).value,
        score=score,
        seconds=seconds,
        input_size=_wh(original),
        output_size=_wh(output),
        panels={k: _embed(v) for k, v in panels.items() if v is not None},
        notes=tuple(notes),
    )


def _load_input(source: Storage, name: str, limits: DecodeLimits) -> tuple[np.ndarray | None, str]:
    """The decoded input, or None and why not (inputs are untrusted: same limits as the pipeline)."""
    try:
        return decode_image(source.get(name), name, limits), ""
    except ObjectNotFoundError:
        return None, "missing from the source"
    except PermanentImageError as exc:
        return None, exc.reason


def _wh(rgb: np.ndarray | None) -> tuple[int, int] | None:
    return None if rgb is None else (rgb.shape[1], rgb.shape[0])


def _crops(original: np.ndarray | None, output: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """The center crop of the 4x output at 1:1, and the same region of the input upscaled nearest."""
    h, w = output.shape[:2]
    cw, ch = min(CROP_MAX, max(1, w // 2)), min(CROP_MAX, max(1, h // 2))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = output[y0 : y0 + ch, x0 : x0 + cw]
    if original is None:
        return None, crop
    sx, sy = original.shape[1] / w, original.shape[0] / h
    ix0, iy0 = int(x0 * sx), int(y0 * sy)
    ix1, iy1 = max(ix0 + 1, round((x0 + cw) * sx)), max(iy0 + 1, round((y0 + ch) * sy))
    region = original[iy0:iy1, ix0:ix1]
    return cv2.resize(region, (cw, ch), interpolation=cv2.INTER_NEAREST), crop


def _embed(rgb: np.ndarray, max_edge: int = THUMB_MAX) -> EmbeddedImage:
    """A thumbnail: kept as lossless PNG when it fits ``max_edge``, else downscaled to JPEG."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_edge / w, max_edge / h)
    buffer = io.BytesIO()
    if scale == 1.0:
        Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
        return EmbeddedImage("image/png", buffer.getvalue(), w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    Image.fromarray(small).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return EmbeddedImage("image/jpeg", buffer.getvalue(), *size)


# -- rendering --------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}
h1{font-size:21px;margin-bottom:4px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:0 0 6px;font-weight:600} h3.chart{margin-top:14px}
table{border-collapse:collapse} th,td{padding:2px 14px 2px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.name,code{font-family:ui-monospace,monospace;word-break:break-all}
.image{border-top:1px solid #eee;padding:14px 0}
.panels{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:@wpx} figure img{width:@wpx;height:auto;display:block;background:#eee}
figcaption{font-size:12px;color:#666}
img.px{image-rendering:pixelated}
.missing{width:@wpx;height:80px;display:flex;align-items:center;justify-content:center;
  background:#f3f3f3;color:#888;font-size:12px;text-align:center}
.failed{color:#b00020} .note{color:#666;font-size:12px}
.counts td{padding-right:28px;font-size:16px}
svg{background:#fafafa;border:1px solid #eee} svg text{font:11px system-ui,sans-serif;fill:#444}
""".replace("@w", str(DISPLAY_WIDTH))

_PANELS = (
    ("input", "input"),
    ("denoised", "denoised"),
    ("sr", "super-resolved x4"),
    ("crop_input", "input, center (nearest)"),
    ("crop_sr", "x4 output, center 1:1"),
)


def _esc(value: object) -> str:
    """HTML-escape anything for text and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


def render_report(data: ReportData) -> str:
    """One self-contained HTML document for ``data``. Raises nothing for well-formed data."""
    body = "\n".join([
        f"<h1>Run <span class=name>{_esc(data.run_id)}</span></h1>",
        f"<p class=note>report generated {_esc(data.generated_at)}</p>",
        _counts_section(data),
        _settings_section(data),
        _timing_section(data),
        _scores_section(data),
        _images_section(data),
        _failures_section(data),
    ])
    head = (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name=viewport content="width=device-width, initial-scale=1">\n'
        f"<title>Run {_esc(data.run_id)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
    )
    document = head + body
    size = len(document.encode()) + 200
    return document + f"\n<p class=note>report size about {_fmt_bytes(size)}</p>\n</body>\n</html>\n"


def _table(rows: Iterable[Sequence[object]], header: Sequence[str] = (), numeric: Sequence[bool] = (),
           css_class: str = "") -> str:
    """Every cell escaped; ``numeric[i]`` right-aligns column i."""
    head = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>" if header else ""
    lines = []
    for row in rows:
        cells = (f"<td{' class=n' if i < len(numeric) and numeric[i] else ''}>{_esc(c)}</td>" for i, c in enumerate(row))
        lines.append("<tr>" + "".join(cells) + "</tr>")
    opening = f"<table class={css_class}>" if css_class else "<table>"
    return f"{opening}{head}{''.join(lines)}</table>"


def _counts_section(data: ReportData) -> str:
    c = data.counts
    wall = _fmt_s(data.wall_seconds) if data.wall_seconds is not None else "n/a"
    pending = f"{c['pending']} ({c['denoised']} denoised)" if c["denoised"] else str(c["pending"])
    row = [c["done"], c["failed"], pending, c["rejected"], c["total"], wall]
    aggregated = (f"<p class=note>aggregated {_esc(data.summary.get('at', ''))}: {_esc(data.summary.get('written', '?'))} rows "
                  "in submission.csv</p>" if data.summary else "<p class=note>not aggregated yet</p>")
    return _table([row], ["done", "failed", "pending", "rejected", "total", "wall time"], css_class="counts") + aggregated


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted.key, text)`` for every leaf; a string holding a JSON object (an embedded artifact
    such as the tone curve) is shown as its size and hash, then its own fields."""
    for key, value in mapping.items():
        artifact = _json_object(value)
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        elif artifact is not None:
            digest = hashlib.sha256(value.encode()).hexdigest()
            yield f"{prefix}{key}", f"JSON, {_fmt_bytes(len(value.encode()))}, sha256 {digest}"
            yield from _flatten(artifact, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", _describe(value)


def _json_object(value: object) -> dict[str, Any] | None:
    if not isinstance(value, str) or not value.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _describe(value: object) -> str:
    """A short text for one setting: long lists by shape, long strings cut."""
    if value == "":
        return "(empty)"
    text = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, list) and len(text) > _LONG_TEXT:
        shape = np.shape(np.asarray(value, dtype=object)) if value else (0,)
        return f"list, {' x '.join(map(str, shape))}"
    return text if len(text) <= _LONG_TEXT else f"{text[:_LONG_TEXT]}… ({len(text)} characters)"


def _settings_section(data: ReportData) -> str:
    rows: list[tuple[str, object]] = [
        ("run id", data.run_id),
        ("source", data.source),
        ("created", data.created_at or "?"),
        ("model requested", data.model),
    ]
    for source, sha, device in data.models or (("?", "?", "?"),):
        rows += [("model source", source), ("model sha256", sha or "n/a"), ("device", device or "n/a")]
    rows += [
        ("code version", ", ".join(data.code_versions) or "?"),
        ("expected columns", data.expected_columns if data.expected_columns is not None else "from the rows"),
        ("seed-compat", "yes (BGR feed, resize to a multiple of 8)" if data.seed_compat else "no"),
    ]
    rows += [(f"pipeline.{k}", v) for k, v in _flatten(data.pipeline)]
    return "<h2>Settings</h2>" + _table(rows)


def _timing_section(data: ReportData) -> str:
    rows = [(t.stage, t.count, _fmt_s(t.p50), _fmt_s(t.p95), _fmt_s(t.total)) for t in data.timings]
    table = _table(rows, ["stage", "images", "p50", "p95", "sum"], [False, True, True, True, True]) if rows else ""
    chart = _line_chart(data.throughput, data.throughput_bin_s) if data.throughput else "<p class=note>no timings yet</p>"
    return f"<h2>Timing</h2>{table}<h3 class=chart>Images finished per {data.throughput_bin_s} s</h3>{chart}"


def _scores_section(data: ReportData) -> str:
    if not data.scores:
        return ""
    mean_psnr = statistics.fmean(s.psnr for s in data.scores if s.psnr is not None)  # inf if any is identical
    mean_ssim = statistics.fmean(s.ssim for s in data.scores if s.ssim is not None)
    return (f"<h2>Scores</h2><p>{len(data.scores)} images scored: mean PSNR {mean_psnr:.2f} dB, mean SSIM "
            f"{mean_ssim:.4f} (PSNR on the submission vectors, as the competition scores)</p>"
            + _bar_chart([(s.name, s.psnr or 0.0) for s in data.scores]))


def _images_section(data: ReportData) -> str:
    order = "worst PSNR first" if data.scores else "in input order"
    parts = [f"<h2>Images ({order})</h2>"]
    parts += [_image_block(i, image) for i, image in enumerate(data.images, 1)]
    if data.omitted:
        parts.append(f"<p class=note>{data.omitted} more images not shown.</p>")
    return "\n".join(parts)


def _image_block(index: int, image: ImageReport) -> str:
    facts = [f"<span class={'failed' if image.state == 'failed' else 'state'}>{_esc(image.state)}</span>"]
    if image.score and image.score.psnr is not None:
        facts.append(f"PSNR {image.score.psnr:.2f} dB, SSIM {image.score.ssim or 0.0:.4f}")
    facts += [f"{_esc(stage)} {_fmt_s(s)}" for stage, s in image.seconds.items()]
    if image.input_size and image.output_size:
        facts.append("{}x{} → {}x{}".format(*image.input_size, *image.output_size))
    notes = [*image.notes, *([image.score.note] if image.score and image.score.note else [])]
    figures = "".join(_figure(image.panels.get(key), caption) for key, caption in _PANELS)
    note_html = "".join(f"<p class=note>{_esc(n)}</p>" for n in notes)
    return (f"<div class=image><h3>{index}. <span class=name>{_esc(image.name)}</span> · {' · '.join(facts)}</h3>"
            f"<div class=panels>{figures}</div>{note_html}</div>")


def _figure(image: EmbeddedImage | None, caption: str) -> str:
    if image is None:
        return f"<figure><div class=missing>no {_esc(caption)}</div><figcaption>{_esc(caption)}</figcaption></figure>"
    pixelated = " class=px" if image.width < DISPLAY_WIDTH else ""
    return (f'<figure><img{pixelated} src="{image.data_uri}" alt="{_esc(caption)}" width={DISPLAY_WIDTH}>'
            f"<figcaption>{_esc(caption)} ({image.width}x{image.height})</figcaption></figure>")


def _failures_section(data: ReportData) -> str:
    if not data.failures:
        return "<h2>Failures</h2><p>none</p>"
    rows = [(f.name, f.stage, f.reason, f.at) for f in data.failures]
    return f"<h2>Failures ({len(rows)})</h2>" + _table(rows, ["name", "stage", "reason", "at"])


# -- charts (inline SVG) ----------------------------------------------------------------------------

_CHART_W, _CHART_H, _PAD_L, _PAD_B, _PAD_T = 820, 230, 48, 28, 24


def _svg(title: str, content: str) -> str:
    return (f'<svg width={_CHART_W} height={_CHART_H} viewBox="0 0 {_CHART_W} {_CHART_H}" role=img '
            f'aria-label="{_esc(title)}"><title>{_esc(title)}</title>{content}</svg>')


def _axes(y_max: float, y_label: str, left: str, right: str) -> str:
    """Axis lines, three y ticks (0, half, max), the y unit above the axis, labels at both ends of x."""
    plot_h = _CHART_H - _PAD_B - _PAD_T
    parts = [f'<line x1={_PAD_L} y1={_PAD_T} x2={_PAD_L} y2={_PAD_T + plot_h} stroke="#999"/>',
             f'<line x1={_PAD_L} y1={_PAD_T + plot_h} x2={_CHART_W - 8} y2={_PAD_T + plot_h} stroke="#999"/>']
    for frac in (0.0, 0.5, 1.0):
        y = _PAD_T + plot_h * (1 - frac)
        parts.append(f'<text x={_PAD_L - 6} y={y + 4:.1f} text-anchor=end>{y_max * frac:g}</text>')
    parts.append(f'<text x={_PAD_L} y={_PAD_T - 10} text-anchor=middle>{_esc(y_label)}</text>')
    parts.append(f'<text x={_PAD_L} y={_CHART_H - 8}>{_esc(left)}</text>')
    parts.append(f'<text x={_CHART_W - 8} y={_CHART_H - 8} text-anchor=end>{_esc(right)}</text>')
    return "".join(parts)


def _nice_max(value: float) -> float:
    """A round axis maximum >= value."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= value)


def _bar_chart(values: Sequence[tuple[str, float]]) -> str:
    """PSNR per image, one bar each, in the given order; an infinite PSNR is drawn at the top."""
    finite = [v for _, v in values if math.isfinite(v)]
    y_max = _nice_max(max(finite, default=1.0))
    plot_w, plot_h = _CHART_W - _PAD_L - 8, _CHART_H - _PAD_B - _PAD_T
    step = plot_w / max(len(values), 1)
    bars = []
    for i, (name, value) in enumerate(values):
        height = plot_h * min(max(value, 0.0), y_max) / y_max if math.isfinite(value) else plot_h
        x = _PAD_L + i * step + step * 0.1
        bars.append(f'<rect x={x:.1f} y={_PAD_T + plot_h - height:.1f} width={max(step * 0.8, 0.5):.1f} '
                    f'height={height:.1f} fill="#4c72b0"><title>{_esc(name)}: {value:.2f} dB</title></rect>')
    return _svg("PSNR per image (dB)", _axes(y_max, "dB", "worst", "best") + "".join(bars))


def _line_chart(points: Sequence[tuple[float, int]], bin_s: int) -> str:
    """Images finished per interval against seconds since the run's first start."""
    y_max = _nice_max(max(n for _, n in points))
    plot_w, plot_h = _CHART_W - _PAD_L - 8, _CHART_H - _PAD_B - _PAD_T
    x_end = max(points[-1][0] + bin_s, 1.0)

    def xy(t: float, n: int) -> tuple[float, float]:
        return _PAD_L + plot_w * (t + bin_s / 2) / x_end, _PAD_T + plot_h * (1 - n / y_max)

    coords = [xy(t, n) for t, n in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(f'<circle cx={x:.1f} cy={y:.1f} r=2.5 fill="#dd8452"><title>{t:g}-{t + bin_s:g} s: {n}</title></circle>'
                   for (x, y), (t, n) in zip(coords, points, strict=True))
    return _svg("images finished per interval", _axes(y_max, "images", "0 s", f"{x_end:g} s")
                + f'<polyline points="{line}" fill="none" stroke="#dd8452" stroke-width="2"/>' + dots)


def _fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


# -- storing ----------------------------------------------------------------------------------------


def write_report(storage: Storage, run_id: str, html: str) -> str:
    """Store the report at ``runs/<run>/report.html`` and return that key.

    Raises:
        InvalidKeyError: ``run_id`` is not a valid run id.
        TransientError: the storage could not be reached.
    """
    key = RunKeys(run_id).report
    storage.put(key, html.encode("utf-8"))
    return key
