import dataclasses
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from markupsafe import escape  # what the Jinja2 template escapes with
from PIL import Image

from producer.evaluate import load_rgb, score
from tests.helpers.browser import ARTIFACTS, assert_loads_cleanly, open_browser, save_full_page_screenshot
from tests.helpers.images import noisy_image, png_bytes, write_images
from tests.helpers.paths import load_script
from workers.errors import ConfigError
from workers.io.imageio import decode_png, encode_png
from workers.io.storage import storage_url_for
from workers.io.submission import format_row, grey_subsample
from workers.ops.resample import bicubic_x4
from workers.report import collect_report_data, render_report, report_stage, truth_by_name, write_report
from workers.report.labels import LABELLED_FIELDS, fmt_db
from workers.run.aggregate import aggregate_stage
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec, RunManifest, now_iso, save_manifest
from workers.run.stages import denoise_stage, upscale_stage
from workers.run.started import RunStart, record_start
from workers.settings import Settings

HOSTILE_DONE = ("<img src=x onerror=alert(1)>.png", "a&b\"quote'.png")
HOSTILE_FAILED = '"><svg onload=alert(2)>.png'  # not an image: fails in the denoise stage
REJECTED = ("evil<b>.txt", "<script>alert(3)</script> is not an image")
RAW_TAGS = ("<img src=x", "<svg onload", "<script", "<b>")


@dataclasses.dataclass
class Run:
    ctx: StageContext
    folder: Path
    names: list[str]
    done: list[str]
    truth: dict[str, Path]


@pytest.fixture(scope="module")
def run(tmp_path_factory, weights_path) -> Run:
    """A finished, aggregated run of 24x16 images: 4 done (2 with hostile names), 1 failed, 1 rejected."""
    root = tmp_path_factory.mktemp("report")
    settings = Settings(storage_url=str(root / "store"), weights=str(weights_path), device="cpu", cpu_workers=1)
    ctx = StageContext(settings)
    folder = root / "in"
    done = write_images(folder, 2, width=24, height=16)
    for seed, name in enumerate(HOSTILE_DONE, 10):
        (folder / name).write_bytes(png_bytes(noisy_image(24, 16, seed=seed)))
    done += list(HOSTILE_DONE)
    (folder / HOSTILE_FAILED).write_bytes(b"this is not an image")
    names = [*done, HOSTILE_FAILED]
    save_manifest(ctx.storage, RunManifest("r1", storage_url_for(folder), tuple(names), PipelineSpec(), "file:test",
                                           rejected=(REJECTED,), created_at=now_iso()))
    record_start(ctx.storage, "r1", RunStart(now_iso(), remaining=len(names), finished=0))
    for name in names:
        denoise_stage(ctx, "r1", name)
    upscale_stage(ctx, "r1", names)
    assert aggregate_stage(ctx, "r1").complete
    truth = {}
    for i, name in enumerate(done):  # brighter and brighter ground truth: different PSNRs
        gt = cv2.resize(noisy_image(24, 16, seed=i), (96, 64), interpolation=cv2.INTER_CUBIC)
        truth[name] = root / "gt" / f"gt_{i}.png"
        truth[name].parent.mkdir(exist_ok=True)
        truth[name].write_bytes(png_bytes(np.clip(gt.astype(int) + 10 + 30 * i, 0, 255).astype(np.uint8)))
    return Run(ctx, folder, names, done, truth)


def collect(run: Run, **kwargs):
    return collect_report_data(run.ctx.storage, run.ctx.storages.open(storage_url_for(run.folder)), "r1", **kwargs)


def assert_self_contained_and_escaped(page: str) -> None:
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:;' in page
    for reference in ("http://", "https://", 'src="//', "<script", "<link", "@import", "url("):
        assert reference not in page
    assert all(src.startswith("data:image/") for src in re.findall(r'src="([^"]*)"', page))
    for raw in RAW_TAGS:
        assert raw not in page


def test_report_shows_every_image_and_failure_escaped(run):
    data = collect(run)
    page = render_report(data)
    assert dict(data.counts) == {"done": 4, "failed": 1, "pending": 0, "denoised": 0, "rejected": 1, "total": 6}
    assert [i.name for i in data.images] == run.names  # input order without ground truth
    for name in run.names:
        assert escape(name) in page
    assert [(f.name, f.stage) for f in data.failures] == [(HOSTILE_FAILED, "denoise"), (REJECTED[0], "listing")]
    assert escape(REJECTED[1]) in page and "not a recognised image" in page
    assert_self_contained_and_escaped(page)
    done = data.images[0]
    assert set(done.panels) == {"input", "denoised", "sr", "crop_input", "crop_sr"}
    assert (done.input_size, done.output_size) == ((24, 16), (96, 64))
    failed = data.images[-1]
    assert failed.state == "failed" and set(failed.panels) == set() and "not a recognised image" in failed.notes[0]


def test_settings_timings_and_throughput(run):
    data = collect(run)
    page = render_report(data)
    assert [(t.stage, t.count) for t in data.timings] == [("denoise", 4), ("upscale", 4)]  # a failed denoise records no meta
    assert all(0 <= t.p50 <= t.p95 for t in data.timings)
    assert sum(n for _, n in data.clock.throughput) == 5  # 4 upscaled + 1 failed
    assert data.clock.finished == 5 and data.clock.finished_before == 0
    assert 0 <= data.clock.first_seconds <= data.clock.wall_seconds
    assert [m[2] for m in data.models] == ["cpu"] and len(data.models[0][1]) == 64
    assert data.summary and data.summary["written"] == 4
    for text in ("NL-means strength", "7 (colour 7)", "template 7 px, search 21 px", "seed-compatible",
                 data.models[0][1], "p95", "images/s", "Timed from the enqueue"):
        assert text in page
    assert "pipeline." not in page and "n/a" not in re.sub(r'src="data:[^"]*"', "", page)  # base64 may hold it
    assert page.count("<svg") == 1  # throughput only: no scores without ground truth


def test_a_pipeline_field_without_a_label_still_shows_in_words_and_escaped(run):
    """A field added to the pipeline before the report labels it is not hidden: nested dicts and JSON
    artifacts are flattened, long values summarised; the tone curve gets its own plain row."""
    data = collect(run, max_images=0)
    curve = {"kind": "lowlight-sr/tone-curve", "lut": [[float(v) for v in range(256)]] * 3, "n_pairs": 3,
             "created_at": "<b>x</b>"}
    extra = {"tone": json.dumps(curve), "future_knob": {"mode": "<b>fast</b>", "long": "y" * 500},
             "artifact": json.dumps({"kind": "k", "lut": curve["lut"]})}
    page = render_report(dataclasses.replace(data, pipeline={**data.pipeline, **extra}))
    for text in ("<td>tone curve</td><td>fitted on 3 pairs, made &lt;b&gt;x&lt;/b&gt;, sha256 ", "future knob: mode",
                 "&lt;b&gt;fast&lt;/b&gt;", "(500 characters)", "artifact: kind", "artifact: lut", "list, 3 x 256"):
        assert text in page
    assert "0.0, 1.0" not in page and "y" * 200 not in page  # summarised, not dumped
    assert_self_contained_and_escaped(page)


def test_every_pipeline_field_has_a_plain_label():
    assert {f.name for f in dataclasses.fields(PipelineSpec)} == LABELLED_FIELDS


def test_with_ground_truth_scores_and_the_bicubic_baseline_match_evaluate_worst_first(run):
    data = collect(run, truth=run.truth)
    keys = RunKeys("r1")
    expected, baseline = {}, {}
    for name in run.done:
        output = decode_png(run.ctx.storage.get(keys.sr(name)))
        expected[name] = score(name, output, load_rgb(run.truth[name]))
        baseline[name] = score(name, bicubic_x4(load_rgb(run.folder / name)), load_rgb(run.truth[name]))
    shown = [i for i in data.images if i.score]
    assert [i.name for i in shown] == sorted(run.done, key=lambda n: expected[n].psnr)
    for image in shown:
        assert image.score.psnr == pytest.approx(expected[image.name].psnr)
        assert image.score.ssim == pytest.approx(expected[image.name].ssim)
        assert image.score.baseline_psnr == pytest.approx(baseline[image.name].psnr)
        assert image.score.baseline_ssim == pytest.approx(baseline[image.name].ssim)
        assert {"truth", "crop_truth"} <= set(image.panels) and image.panels["truth"].width == 96
    assert data.images[-1].name == HOSTILE_FAILED  # unscored images follow, in input order
    gains = [expected[n].psnr - baseline[n].psnr for n in run.done]
    assert data.means.gain == pytest.approx(sum(gains) / len(gains))
    assert data.means.baseline_psnr == pytest.approx(sum(b.psnr for b in baseline.values()) / len(baseline))
    page = render_report(data)
    assert page.count("<svg") == 2 and "worst PSNR first" in page and "over bicubic on average" in page
    assert fmt_db(data.means.gain, signed=True) in page and "ground truth, centre 1:1" in page
    assert_self_contained_and_escaped(page)


def test_truth_by_name_matches_by_submission_id(tmp_path):
    (tmp_path / "gt_00001.png").write_bytes(b"")
    (tmp_path / "other.png").write_bytes(b"")
    assert truth_by_name(["val_00001.png", "val_00002.png", "other.png"], tmp_path) == {
        "val_00001.png": tmp_path / "gt_00001.png", "other.png": tmp_path / "other.png"}
    with pytest.raises(ConfigError):
        truth_by_name([], tmp_path / "missing")


def test_max_images_caps_and_says_how_many_are_left_out(run):
    data = collect(run, max_images=2)
    assert len(data.images) == 2 and data.omitted == 3
    page = render_report(data)
    assert "3 more images not shown" in page
    assert all(escape(name) in page for name in run.names[:2])
    assert all(escape(name) not in page for name in HOSTILE_DONE)  # done and not shown
    assert escape(HOSTILE_FAILED) in page  # not shown, but listed with the failures


def test_large_images_become_small_thumbnails_and_unfinished_ones_count_as_pending(settings, tmp_path):
    """No model here: the stage outputs are written directly, as a 400x300 run would leave them."""
    ctx = StageContext(settings)
    folder = tmp_path / "in"
    names = write_images(folder, 3, width=400, height=300)
    save_manifest(ctx.storage, RunManifest("big", storage_url_for(folder), tuple(names), PipelineSpec(), "file:test"))
    keys = RunKeys("big")
    big = cv2.resize(noisy_image(400, 300), (1600, 1200), interpolation=cv2.INTER_NEAREST)
    ctx.storage.put(keys.denoised(names[0]), encode_png(noisy_image(400, 300)))
    ctx.storage.put(keys.sr(names[0]), encode_png(big))
    ctx.storage.put(keys.row(names[0]), format_row("gt_00001", grey_subsample(big)).encode())
    ctx.storage.put(keys.denoised(names[1]), encode_png(noisy_image(400, 300)))
    data = collect_report_data(ctx.storage, ctx.storages.open(storage_url_for(folder)), "big")
    assert {k: data.counts[k] for k in ("done", "pending", "denoised")} == {"done": 1, "pending": 2, "denoised": 1}
    panels = data.images[0].panels
    assert (panels["sr"].mime, panels["sr"].width, panels["sr"].height) == ("image/jpeg", 384, 288)
    assert (panels["input"].width, panels["crop_sr"].width, panels["crop_input"].width) == (384, 128, 128)
    assert data.clock.wall_seconds is None and data.timings == () and data.summary is None
    page = render_report(data)
    assert "not aggregated yet" in page and "no throughput to draw" in page and "2 (1 denoised)" in page
    assert len(page) < 300_000


def test_write_report_stores_it_under_the_run(run):
    page = render_report(collect(run))
    key = write_report(run.ctx.storage, "r1", page)
    assert key == RunKeys("r1").report == "runs/r1/report.html"
    assert run.ctx.storage.get(key).decode() == page
    assert len(page) < 2_000_000


# -- in a real browser ------------------------------------------------------------------------------

@pytest.mark.integration
def test_report_in_headless_chromium(run, tmp_path):
    page = render_report(collect(run, truth=run.truth))
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    # The same page without its CSP: escaping alone must keep the hostile names inert.
    unprotected = tmp_path / "no-csp.html"
    unprotected.write_text(re.sub(r"<meta http-equiv=\"Content-Security-Policy\"[^>]*>", "", page), encoding="utf-8")
    driver = open_browser()
    try:
        assert_loads_cleanly(driver, unprotected)
        assert_loads_cleanly(driver, report)
        charts = driver.execute_script("return ['svg', 'svg > rect', 'svg > circle'].map("
                                       "q => document.querySelectorAll(q).length)")
        assert charts[:2] == [2, 5] and charts[2] > 0  # 4 bars and the legend, direct children: the SVG parsed as meant
        save_full_page_screenshot(driver, ARTIFACTS / "report-hostile-names.png")
    finally:
        driver.quit()


def test_report_and_evaluate_score_outputs_above_pillows_limit_and_truths_above_the_input_limit(
        settings, tmp_path, monkeypatch):
    """With inputs above ~11 MP the 4x output tripped Pillow's bomb limit in the report (the aggregate task
    failed, unretried) and in evaluate; ground truths of inputs above ~1 MP were refused by the input limits."""
    from producer.evaluate import score_run

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # Pillow's limit below 16x the input limit, as in production
    ctx = StageContext(settings.replace(max_image_pixels=1000))  # 32x24 inputs fit; their 128x96 truths do not
    folder = tmp_path / "in"
    names = write_images(folder, 1, prefix="val_")
    manifest = RunManifest("big", storage_url_for(folder), tuple(names), PipelineSpec(upscaler="bicubic"), "bicubic")
    save_manifest(ctx.storage, manifest)
    upscale_stage(ctx, "big", names)
    assert aggregate_stage(ctx, "big").written == 1
    truth = tmp_path / "gt" / "gt_00001.png"
    truth.parent.mkdir()
    truth.write_bytes(png_bytes(cv2.resize(noisy_image(32, 24), (128, 96), interpolation=cv2.INTER_CUBIC)))

    report_stage(ctx, "big")  # what the aggregate task runs
    data = collect_report_data(ctx.storage, ctx.source(manifest), "big", {names[0]: truth}, limits=ctx.limits)
    (image,) = data.images
    assert image.output_size == (128, 96) and image.score.psnr is not None, image.score
    scored = score_run(ctx.storage, manifest, [(folder / names[0], truth)], "bicubic", ctx.limits)
    assert len(scored.images) == 1 and not scored.missing


@pytest.mark.slow
def test_report_memory_does_not_grow_with_the_meta_files(tmp_path):
    """Every meta JSON was held at once: ~4 KiB per image, ~450 MiB at 100k. Now they are summarised as
    read; what grows is the listing and the manifest's names (benchmarks/memory.py measures both)."""
    memory = load_script("memory")
    over = {}
    for count in (2_000, 20_000):
        store = tmp_path / str(count)
        store.mkdir()
        memory.write_metas(store, count)
        result = memory.run_child("report", {"store": str(store)})
        over[count] = result["peak_mib"] - result["before_mib"]
    kib_per_image = (over[20_000] - over[2_000]) * 1024 / 18_000
    assert kib_per_image < 1.5, over
