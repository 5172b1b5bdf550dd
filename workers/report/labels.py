"""How the report words a run: its settings with plain labels, only those of the stages the pipeline
has, sources without a machine's absolute paths, and the formatting of times, sizes and decibels.

A pipeline field this module has no label for is still shown (flattened, its name in words), so a
new field is never hidden; ``tests/test_report.py`` asks every field for a label.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from workers.report.data import ReportData

_LONG_TEXT = 160  # settings longer than this are summarised
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")
_PATH_IN_TEXT = re.compile(r"file:(?://)?/[^\s'\"<>,;)]+|(?<![\w.~:/\\-])/(?:[^\s/'\"<>,;)]+/)+[^\s/'\"<>,;)]*")

UPSCALERS = {
    "model": "Real-ESRGAN-type model x4 (the workers' WEIGHTS)",
    "learned": "trained model x4",
    "bicubic": "bicubic x4 (OpenCV)",
}
STAGES = {"denoise": "CPU stage", "upscale": "upscale x4"}  # the per-image stages, by their meta name
# The pipeline fields the rows below describe; any other is shown as it is (see _other_fields).
LABELLED_FIELDS = frozenset(
    {
        "preset",
        "denoise",
        "channel_order",
        "resize_multiple",
        "upscaler",
        "tone",
        "scale_nlm_by_gain",
        "denoise_on",
        "checkpoint",
        "checkpoint_sha256",
        "tta",
    }
)


def plain_source(text: str) -> str:
    """A source as the report shows it: a local file or folder (``file:``, ``file://``, an absolute
    path) by its name, never the machine's path; ``s3://``, ``hf:`` and run-store keys as they are."""
    if text.startswith("file://"):
        path = unquote(urlparse(text).path)
    elif text.startswith("file:"):
        path = text.removeprefix("file:")
    elif _URL.match(text) or not (text.startswith(("/", "~", "\\")) or _WINDOWS_PATH.match(text)):
        return text
    else:
        path = text
    windows = _WINDOWS_PATH.match(path) or "\\" in path
    name = (PureWindowsPath(path) if windows else PurePosixPath(path)).name
    return name or path.strip("/\\") or "/"


def without_paths(text: str) -> str:
    """``text`` (an error someone's machine wrote) with each absolute local path or ``file:`` URL in
    it cut to its last part, as :func:`plain_source` shows a source; URLs of other schemes stay."""
    return _PATH_IN_TEXT.sub(lambda m: plain_source(m.group(0)), text)


def cpu_stage(pipeline: Mapping[str, Any]) -> str:
    """What the CPU stage does to the pixels ("tone curve + NL-means", ...), "" when nothing."""
    steps = [
        name
        for name, present in (("tone curve", bool(pipeline.get("tone"))), ("NL-means", _denoiser(pipeline) != "none"))
        if present
    ]
    return " + ".join(steps)


def cpu_stage_caption(pipeline: Mapping[str, Any]) -> str:
    """The caption of the CPU stage's image: "denoised", "tone-mapped" or "tone-mapped + denoised"."""
    words = {"tone curve": "tone-mapped", "NL-means": "denoised"}
    return " + ".join(words[step] for step in cpu_stage(pipeline).split(" + ") if step)


def stage_label(stage: str, pipeline: Mapping[str, Any]) -> str:
    """A per-image stage as the timing table names it."""
    if stage == "denoise":
        return cpu_stage(pipeline) or "CPU stage"
    return STAGES.get(stage, stage)


def settings_rows(data: ReportData) -> list[tuple[str, str]]:
    """The run's settings, one ``(label, text)`` each: the run, then each stage the pipeline has."""
    p = data.pipeline
    rows = [("run id", data.run_id), ("source", plain_source(data.source))]
    if data.clock.started_at:
        rows.append(("enqueued", fmt_time(data.clock.started_at)))
    if data.created_at and not _within_a_minute(data.created_at, data.clock.started_at):
        rows.append(("first enqueued", fmt_time(data.created_at)))
    rows += [("preset", str(p.get("preset", "?"))), ("stages", _stages(p))]
    rows += _tone_rows(p) + _denoise_rows(p) + _upscaler_rows(data)
    if p.get("resize_multiple"):
        rows.append(("final resize", f"Lanczos to a multiple of {p['resize_multiple']} (as the seed did)"))
    rows += _other_fields(p)
    rows += [
        ("code version", ", ".join(data.code_versions) or "?"),
        ("submission columns", str(data.expected_columns) if data.expected_columns is not None else "from the rows"),
        ("seed-compatible", "yes (BGR feed, resize to a multiple of 8)" if data.seed_compat else "no"),
    ]
    return rows


def training_rows(data: ReportData) -> list[tuple[str, str]]:
    t = data.training
    if t is None:
        return []
    best = (
        f"{t.best_psnr:.2f} dB at step {t.best_step}" if t.best_psnr is not None else "not measured (no pair held back)"
    )
    start = f"{plain_source(t.start)} ({t.architecture})" + (f", sha256 {t.start_sha256}" if t.start_sha256 else "")
    rows = [("started from", start), ("steps", str(t.steps)), ("training pairs", str(t.pairs))]
    if t.photos:
        rows.append(("clean photos", f"{t.photos} (degraded under the forward model)"))
    return rows + [("best held-back PSNR", best), ("training time", fmt_s(t.seconds))]


def _stages(p: Mapping[str, Any]) -> str:
    upscaler = str(p.get("upscaler", "?"))
    steps = [*filter(None, cpu_stage(p).split(" + ")), UPSCALERS.get(upscaler, upscaler)]
    if p.get("resize_multiple"):
        steps.append("Lanczos resize")
    return " → ".join(steps)


def _denoiser(p: Mapping[str, Any]) -> str:
    denoise = p.get("denoise")
    return str(denoise.get("method", "none")) if isinstance(denoise, Mapping) else "none"


def _tone_rows(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    tone = p.get("tone")
    if not tone:
        return []
    curve = _json_object(tone) or {}
    digest = hashlib.sha256(str(tone).encode()).hexdigest()
    pairs = curve.get("n_pairs")
    fitted = f"fitted on {pairs} pair{'' if pairs == 1 else 's'}, " if pairs is not None else ""
    made = f"made {fmt_time(str(curve['created_at']))}, " if curve.get("created_at") else ""
    return [("tone curve", f"{fitted}{made}sha256 {digest[:16]} ({fmt_bytes(len(str(tone).encode()))})")]


def _denoise_rows(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    method = _denoiser(p)
    if method == "none":
        return [("denoiser", "none" + (" (the trained model denoises)" if p.get("upscaler") == "learned" else ""))]
    spec = p["denoise"]
    where = "on the GPU (PyTorch)" if p.get("denoise_on") == "gpu" else "on the CPU (OpenCV)"
    rows = [("denoiser", f"{'NL-means' if method == 'nlm' else method}, {where}")]
    if method == "nlm":
        rows += [
            ("NL-means strength", f"{spec.get('h'):g} (colour {spec.get('h_color'):g})"),
            ("NL-means windows", f"template {spec.get('template')} px, search {spec.get('search')} px"),
        ]
        if p.get("scale_nlm_by_gain"):
            rows.append(("NL-means by brightness", "stronger where the tone curve brightens (and amplifies noise)"))
    return rows


def _upscaler_rows(data: ReportData) -> list[tuple[str, str]]:
    p = data.pipeline
    upscaler = str(p.get("upscaler", "?"))
    rows = [("upscaler", UPSCALERS.get(upscaler, upscaler))]
    if upscaler == "bicubic":
        return rows
    if upscaler == "learned":
        model = f"{data.model_name} (shipped with the project)" if data.model_name else "the run's own trained model"
    else:
        model = plain_source(data.model)
    rows.append(("model", model))
    for source, sha, device, precision in data.models or (("", str(p.get("checkpoint_sha256") or ""), "", ""),):
        if source and source != data.model:
            rows.append(("model loaded", plain_source(source)))
        rows += [("model sha256", sha or "not loaded yet"), ("device", device or "not loaded yet")]
        if precision:
            rows.append(("precision", precision))
    rows.append(("self-ensemble (x8)", "yes: 8 flips and rotations averaged" if p.get("tta") else "no"))
    if p.get("channel_order") == "bgr":
        rows.append(("model input", "BGR (the seed's feed order)"))
    return rows


def _other_fields(p: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Fields without a label: their names in words, nested ones flattened."""
    return list(_flatten({k: v for k, v in p.items() if k not in LABELLED_FIELDS}))


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(words, text)`` for every leaf; a string holding a JSON object (an embedded artifact) is
    shown as its size and hash, then its own fields."""
    for key, value in mapping.items():
        label = f"{prefix}{str(key).replace('_', ' ')}"
        artifact = _json_object(value)
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{label}: ")
        elif artifact is not None:
            digest = hashlib.sha256(value.encode()).hexdigest()
            yield label, f"JSON, {fmt_bytes(len(value.encode()))}, sha256 {digest}"
            yield from _flatten(artifact, f"{label}: ")
        else:
            yield label, _describe(value)


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


def _within_a_minute(a: str, b: str) -> bool:
    try:
        return abs(datetime.fromisoformat(a).timestamp() - datetime.fromisoformat(b).timestamp()) < 60
    except ValueError:
        return False


def fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def fmt_time(iso: str) -> str:
    """An ISO 8601 time as people read it, in UTC to the second: ``2026-12-07 14:48:47 UTC``."""
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def fmt_rate(per_s: float) -> str:
    """Images per second, to three significant digits."""
    return f"{per_s:.3g}"


def fmt_db(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return ("+∞" if signed and value > 0 else "∞" if value > 0 else "−∞") + " dB"
    return f"{value:+.2f} dB" if signed else f"{value:.2f} dB"


def fmt_bytes(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"
