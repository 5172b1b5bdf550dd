"""The report as a person sees it, in headless Chromium: each preset (``learned``, the default;
``standard`` with NL-means; ``quality`` with a tone curve and bicubic), with and without ground
truth, with a failed image, and a resumed run that had nothing left to do. Runs are made the way
``producer enqueue`` makes them (``prepare_run``, the embedded runner); the reports with ground truth
the way ``producer report --gt`` does. Screenshots go to ``test-artifacts/report-*.png``;
``UPDATE_DOCS_SCREENSHOTS=1`` refreshes ``docs/report.png`` from the default preset on the sample."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import cli
from producer.embedded import run_embedded
from producer.planning import prepare_run
from tests.helpers.browser import ARTIFACTS, assert_loads_cleanly, open_browser, save_full_page_screenshot
from tests.helpers.images import noisy_image, png_bytes
from tests.helpers.paths import DATASET, REPO
from workers.io.storage import LocalStorage
from workers.ops.denoise import DenoiseSpec
from workers.ops.tone import fit_from_pairs
from workers.run.context import StageContext
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec
from workers.run.presets import build_pipeline
from workers.run.resolve import PipelineChoice, resolve_pipeline
from workers.settings import Settings

pytestmark = pytest.mark.integration

IMAGES = 3
BROKEN = "val_00004.png"  # not an image: fails at its first stage
PATH_LIKE = re.compile(r"(?<![\w.:/])/(?:tmp|home|root|work|Users|var|opt|srv|mnt)/")


@dataclasses.dataclass
class Stories:
    root: Path
    weights: Path  # the standard preset's model (WEIGHTS)
    pages: dict[str, Path]  # "learned", "learned-gt", ..., "learned-resumed" -> the report


def _photos(root: Path) -> tuple[Path, Path]:
    """Dark noisy 32x24 inputs named as the competition names them, one broken file, and 128x96
    ground truths (brighter, smoother: every pipeline and bicubic score differently)."""
    folder, gt = root / "photos", root / "gt"
    folder.mkdir()
    gt.mkdir()
    for i in range(1, IMAGES + 1):
        (folder / f"val_{i:05d}.png").write_bytes(png_bytes(noisy_image(32, 24, seed=i)))
        clean = cv2.resize(
            cv2.GaussianBlur(noisy_image(32, 24, seed=i), (3, 3), 0), (128, 96), interpolation=cv2.INTER_CUBIC
        )
        (gt / f"gt_{i:05d}.png").write_bytes(png_bytes(np.clip(clean.astype(int) + 12 * i, 0, 255).astype(np.uint8)))
    (folder / BROKEN).write_bytes(b"this is not an image")
    return folder, gt


def _quality() -> PipelineSpec:
    """The quality preset's shape (a tone curve, NL-means scaled by its gain, bicubic), from a curve
    fitted on one synthetic pair instead of a calibration run."""
    dark = noisy_image(32, 24, seed=7)
    bright = cv2.resize(
        np.clip(dark.astype(int) * 2, 0, 255).astype(np.uint8), (128, 96), interpolation=cv2.INTER_CUBIC
    )
    curve = fit_from_pairs([(dark, bright)])
    return PipelineSpec(
        preset="quality",
        denoise=DenoiseSpec(h=5.0, h_color=5.0),
        upscaler="bicubic",
        tone=curve.to_json().decode(),
        scale_nlm_by_gain=True,
    )


@pytest.fixture(scope="module")
def stories(tmp_path_factory, weights_path) -> Stories:
    root = tmp_path_factory.mktemp("stories")
    folder, gt = _photos(root)
    store = root / "store"
    settings = Settings(storage_url=str(store), weights=str(weights_path), device="cpu", cpu_workers=1)
    ctx = StageContext(settings)
    learned = resolve_pipeline(
        PipelineChoice(preset=None, denoise=DenoiseSpec()), str(folder), ctx.storages, ctx.storage
    ).pipeline
    pages = {}
    for preset, pipeline in (("learned", learned), ("standard", build_pipeline("standard")), ("quality", _quality())):
        plan = prepare_run(settings, ctx.storage, str(folder), pipeline)
        run_embedded(ctx, plan, show_progress=False)  # writes runs/<run>/report.html, as enqueue does
        pages[preset] = _copy(store / RunKeys(plan.run_id).report, root / f"{preset}.html")
        pages[f"{preset}-gt"] = _report_with_truth(store, plan.run_id, gt, root / f"{preset}-gt.html")
    # The default preset enqueued again: nothing left to do.
    again = prepare_run(settings, ctx.storage, str(folder), learned)
    assert not again.has_work
    run_embedded(ctx, again, show_progress=False)
    pages["learned-resumed"] = _copy(store / RunKeys(again.run_id).report, root / "learned-resumed.html")
    return Stories(root, weights_path, pages)


def _copy(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def _report_with_truth(store: Path, run_id: str, gt: Path, path: Path) -> Path:
    """The report `producer report RUN --gt DIR` writes."""
    result = CliRunner().invoke(
        cli,
        ["report", run_id, "--gt", str(gt), "-o", str(path)],
        env={"STORAGE_URL": str(store), "DEVICE": "cpu", "BROKER_URL": ""},
    )
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def browser():
    driver = open_browser()
    yield driver
    driver.quit()


def _seen(driver) -> dict:
    """What a person sees: the counts row, every caption, the visible text, the charts' labels."""
    return driver.execute_script("""
        const cells = t => Array.from(document.querySelectorAll(t)).map(e => e.textContent.trim());
        const counts = document.querySelector('table.counts');
        const heads = Array.from(counts.querySelectorAll('th')).map(e => e.textContent.trim());
        const values = Array.from(counts.querySelectorAll('td')).map(e => e.textContent.trim());
        const svgs = Array.from(document.querySelectorAll('svg')).map(s => ({
            title: s.getAttribute('aria-label'),
            axes: Array.from(s.querySelectorAll(':scope > text.axis')).map(e => e.textContent),
            names: Array.from(s.querySelectorAll(':scope > text.name')).map(e => e.textContent),
            values: Array.from(s.querySelectorAll(':scope > text.value')).map(e => e.textContent),
            indices: Array.from(s.querySelectorAll(':scope > text.index')).map(e => e.textContent),
            bars: s.querySelectorAll(':scope > rect').length,
            baselines: s.querySelectorAll(':scope > line.baseline').length,
            width: s.getBoundingClientRect().width}));
        const settings = {};  // the tables of labels and values (settings, trained model)
        for (const table of document.querySelectorAll('h2 + table')) {
            if (table.querySelector('th')) continue;
            for (const row of table.querySelectorAll('tr')) {
                const [k, v] = row.querySelectorAll('td');
                settings[k.textContent] = v.textContent;
            }
        }
        return {counts: Object.fromEntries(heads.map((h, i) => [h, values[i]])), captions: cells('figcaption'),
                text: document.body.innerText, svgs: svgs, settings: settings,
                headings: cells('.image > h3'), failures: cells('h2 + table td:first-child')};
    """)


STAGE_CAPTION = {"learned": None, "standard": "denoised", "quality": "tone-mapped + denoised"}


@pytest.mark.parametrize("truth", [False, True], ids=["plain", "gt"])
@pytest.mark.parametrize("preset", ["learned", "standard", "quality"])
def test_each_preset_tells_its_story(stories, browser, preset, truth):
    page = stories.pages[f"{preset}-gt" if truth else preset]
    assert_loads_cleanly(browser, page)  # every image decodes, no script runs
    seen = _seen(browser)
    save_full_page_screenshot(browser, ARTIFACTS / f"report-{preset}{'-gt' if truth else ''}.png")

    # The clock: from the enqueue, for every pipeline.
    assert re.fullmatch(r"\d+(\.\d+)? (ms|s|min)", seen["counts"]["wall time"]), seen["counts"]
    assert re.fullmatch(r"\d+(\.\d+)?(e-\d+)?", seen["counts"]["images/s"]), seen["counts"]
    assert (seen["counts"]["done"], seen["counts"]["failed"]) == (str(IMAGES), "1")
    assert "Timed from the enqueue at" in seen["text"] and "n/a" not in seen["text"]
    throughput = next(s for s in seen["svgs"] if s["title"] == "images finished per interval")
    assert throughput["axes"] == ["images per 1 s", "seconds since the run was enqueued"]

    # Only the stages the pipeline has, in plain words, and no machine's path anywhere.
    settings = seen["settings"]
    caption = STAGE_CAPTION[preset]
    stage_captions = {c.split(" (")[0] for c in seen["captions"]} - {
        "input",
        "output x4",
        "ground truth",
        "input, centre",
        "output, centre 1:1",
        "ground truth, centre 1:1",
    }
    assert stage_captions == ({caption} if caption else set()), seen["captions"]
    assert not any("." in label or "_" in label for label in settings), settings
    if preset == "learned":
        assert "NL-means" not in seen["text"] and "denoised" not in seen["text"]
        assert settings["model"] == "lowlight-compact (shipped with the project)"
        assert settings["denoiser"] == "none (the trained model denoises)" and settings["self-ensemble (x8)"] == "no"
        assert settings["started from"].startswith("realesr-animevideov3.pth (RealESRGAN Compact), sha256 ")
    elif preset == "standard":
        assert settings["NL-means strength"] == "7 (colour 7)" and settings["model"] == stories.weights.name
    else:
        assert settings["upscaler"] == "bicubic x4 (OpenCV)" and settings["tone curve"].startswith("fitted on 1 pair,")
        assert "model" not in settings and "self-ensemble (x8)" not in settings
    assert settings["source"] == "photos"
    source = browser.page_source
    for where in (str(stories.root), str(REPO), str(Path.home())):
        assert where not in source
    assert not PATH_LIKE.search(seen["text"]), PATH_LIKE.search(seen["text"])

    # The failure, named with its stage and reason.
    assert BROKEN in seen["failures"] and any(BROKEN in h and "failed" in h for h in seen["headings"])

    # Ground truth: the baseline, the truth beside the output, a labelled chart.
    if truth:
        psnr = next(s for s in seen["svgs"] if s["title"].startswith("PSNR per image"))
        assert psnr["axes"] == ["PSNR (dB)", "images, worst PSNR first (numbered as in Images below)"]
        assert len(psnr["names"]) == len(psnr["values"]) == psnr["baselines"] == IMAGES
        assert sorted(psnr["names"]) == [f"val_{i:05d}.png" for i in range(1, IMAGES + 1)]
        assert psnr["indices"] == [str(i) for i in range(1, IMAGES + 1)]
        assert re.search(
            r"mean PSNR [\d.]+ dB.*bicubic x4 of the same inputs: [\d.]+ dB.*[+-][\d.]+ dB over bicubic", seen["text"]
        )
        scored = [h for h in seen["headings"] if "PSNR" in h]
        assert len(scored) == IMAGES and all(re.search(r"\(bicubic [\d.]+ dB, [+-][\d.]+ dB\)", h) for h in scored)
        assert seen["captions"].count("ground truth (128x96)") == IMAGES
        assert seen["captions"].count("ground truth, centre 1:1 (64x48)") == IMAGES
    else:
        assert "ground truth" not in seen["text"] and not any(s["title"].startswith("PSNR") for s in seen["svgs"])
    assert all(s["axes"] for s in seen["svgs"]) and all(s["width"] > 0 for s in seen["svgs"])


def test_a_resumed_run_with_nothing_left_says_so(stories, browser):
    assert_loads_cleanly(browser, stories.pages["learned-resumed"])
    seen = _seen(browser)
    save_full_page_screenshot(browser, ARTIFACTS / "report-learned-resumed.png")
    assert seen["counts"]["wall time"] == "nothing to do" and seen["counts"]["images/s"] == "none yet"
    assert f"all {IMAGES + 1} images had finished before it" in seen["text"]
    assert "no throughput to draw" in seen["text"] and "n/a" not in seen["text"]
    assert not any(s["title"] == "images finished per interval" for s in seen["svgs"])


def test_the_default_report_on_the_sample(tmp_path, browser):
    """`producer enqueue dataset/` with the default preset: the report the README shows."""
    settings = Settings(storage_url=str(tmp_path / "store"), device="cpu", cpu_workers=1)
    ctx = StageContext(settings)
    choice = PipelineChoice(preset=None, denoise=DenoiseSpec(), dataset_model=False)  # the shipped model
    pipeline = resolve_pipeline(choice, str(DATASET), ctx.storages, ctx.storage).pipeline
    plan = prepare_run(settings, ctx.storage, str(DATASET), pipeline)
    run_embedded(ctx, plan, show_progress=False)
    page = tmp_path / "report.html"
    page.write_bytes(LocalStorage(tmp_path / "store").get(RunKeys(plan.run_id).report))
    assert_loads_cleanly(browser, page)
    seen = _seen(browser)
    assert re.fullmatch(r"\d+(\.\d+)? (ms|s|min)", seen["counts"]["wall time"]) and seen["counts"]["done"] == "8"
    assert "n/a" not in seen["text"] and "NL-means" not in seen["text"]
    assert any(s["title"] == "images finished per interval" for s in seen["svgs"])
    save_full_page_screenshot(browser, ARTIFACTS / "report-sample.png")
    # For the docs: the page down to its third image (the rest repeats).
    third = browser.execute_script(
        "return document.querySelectorAll('.image')[2].getBoundingClientRect().bottom + window.scrollY"
    )
    shot = save_full_page_screenshot(browser, ARTIFACTS / "report.png", height=third + 16)
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(shot, REPO / "docs" / "report.png")
