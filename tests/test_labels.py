"""How the report words a run: plain labels, only the stages the pipeline has, no machine's paths."""

from __future__ import annotations

import dataclasses

import pytest

from workers.ops.denoise import DenoiseSpec
from workers.report.data import ReportData, RunClock, TrainingSummary
from workers.report.labels import (
    cpu_stage_caption,
    fmt_db,
    plain_source,
    settings_rows,
    stage_label,
    training_rows,
    without_paths,
)
from workers.run.manifest import PipelineSpec

SHA = "5957ed5820effef86535f76979c219db232bb47452645b87c31e105cd8ae4356"
LEARNED = PipelineSpec(
    preset="learned",
    denoise=DenoiseSpec(method="none"),
    upscaler="learned",
    checkpoint=f"checkpoints/{SHA}.safetensors",
    checkpoint_sha256=SHA,
)
STANDARD = PipelineSpec(preset="standard")
QUALITY = PipelineSpec(
    preset="quality",
    denoise=DenoiseSpec(h=4.5, h_color=6.0),
    upscaler="bicubic",
    tone='{"kind": "lowlight-sr/tone-curve", "n_pairs": 12, "created_at": "2026-12-01T00:00:00+00:00"}',
    scale_nlm_by_gain=True,
)


def report_data(pipeline: PipelineSpec, **changes) -> ReportData:
    clock = RunClock("2026-12-07T10:00:00.000+00:00", 3, 3, 0, 2.5, 1.0, 1, ((0.0, 1), (1.0, 2)))
    data = ReportData(
        run_id="sample-1234",
        source="file:///home/someone/photos/dataset/test",
        created_at="2026-12-07T10:00:00.010+00:00",
        model=f"run:{pipeline.checkpoint}"
        if pipeline.checkpoint
        else "file:/home/someone/weights/RealESRGAN_x4plus.pth",
        model_name="",
        expected_columns=None,
        seed_compat=False,
        pipeline=pipeline.to_dict(),
        models=(("file:/home/someone/weights/RealESRGAN_x4plus.pth", "ab" * 32, "cpu", "fp32: not a CPU with bf16"),)
        if pipeline.upscaler == "model"
        else ((f"run:{pipeline.checkpoint}", SHA, "cuda:0", "fp16: CUDA"),)
        if pipeline.checkpoint
        else (),
        code_versions=("0.1.0",),
        counts={},
        summary=None,
        clock=clock,
        timings=(),
        scores=(),
        means=None,
        with_truth=False,
        images=(),
        omitted=0,
        failures=(),
    )
    return dataclasses.replace(data, **changes)


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("file:///home/someone/photos/dataset/test", "test"),
        ("file:///home/someone/My%20Photos", "My Photos"),
        ("file:/work/shared/weights/realesr-animevideov3.pth", "realesr-animevideov3.pth"),
        ("file:compact.pth", "compact.pth"),
        ("/home/someone/weights/x4.pth", "x4.pth"),
        ("~/weights/x4.pth", "x4.pth"),
        ("C:\\Users\\someone\\x4.pth", "x4.pth"),
        ("s3://bucket/runs/r1/input", "s3://bucket/runs/r1/input"),
        ("hf:ai-forever/Real-ESRGAN/RealESRGAN_x4.pth@main", "hf:ai-forever/Real-ESRGAN/RealESRGAN_x4.pth@main"),
        ("run:checkpoints/abc.safetensors", "run:checkpoints/abc.safetensors"),
        ("bicubic", "bicubic"),
    ],
)
def test_sources_are_shown_without_the_machines_path(given, shown):
    assert plain_source(given) == shown


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        (
            "gave up after 3 transient errors: [Errno 28] No space left on device: '/data/store/runs/r1/sr/a.png'",
            "gave up after 3 transient errors: [Errno 28] No space left on device: 'a.png'",
        ),
        ("cannot read file:///home/someone/in/a.png, try again", "cannot read a.png, try again"),
        ("S3 at http://127.0.0.1:9000/bucket/x failed", "S3 at http://127.0.0.1:9000/bucket/x failed"),
        ("runs/r1/sr/a.png is missing; 1/2 of a / b", "runs/r1/sr/a.png is missing; 1/2 of a / b"),
    ],
)
def test_error_texts_lose_the_machines_paths_only(given, shown):
    assert without_paths(given) == shown


def rows(pipeline: PipelineSpec, **changes) -> dict[str, str]:
    return dict(settings_rows(report_data(pipeline, **changes)))


def test_learned_shows_its_model_and_no_denoiser_settings():
    shown = rows(LEARNED, model_name="lowlight-compact")
    assert shown["stages"] == "trained model x4"
    assert shown["denoiser"] == "none (the trained model denoises)"
    assert shown["model"] == "lowlight-compact (shipped with the project)"
    assert (shown["model sha256"], shown["device"], shown["self-ensemble (x8)"]) == (SHA, "cuda:0", "no")
    assert (
        shown["source"] == "test" and shown["enqueued"] == "2026-12-07 10:00:00 UTC" and "first enqueued" not in shown
    )
    assert not any("NL-means" in label or "tone" in label or "." in label for label in shown)
    assert rows(dataclasses.replace(LEARNED, tta=True))["model"] == "the run's own trained model"
    assert rows(dataclasses.replace(LEARNED, tta=True))["self-ensemble (x8)"].startswith("yes")


def test_standard_shows_nlmeans_and_the_model_by_its_file_name():
    shown = rows(STANDARD)
    assert shown["stages"] == "NL-means → Real-ESRGAN-type model x4 (the workers' WEIGHTS)"
    assert shown["denoiser"] == "NL-means, on the CPU (OpenCV)"
    assert (shown["NL-means strength"], shown["NL-means windows"]) == ("7 (colour 7)", "template 7 px, search 21 px")
    assert shown["model"] == "RealESRGAN_x4plus.pth" and "model loaded" not in shown
    assert "tone curve" not in shown and "NL-means by brightness" not in shown
    on_gpu = rows(dataclasses.replace(STANDARD, denoise_on="gpu", channel_order="bgr", resize_multiple=8))
    assert on_gpu["denoiser"] == "NL-means, on the GPU (PyTorch)" and on_gpu["model input"].startswith("BGR")
    assert on_gpu["final resize"].startswith("Lanczos to a multiple of 8")
    assert all("/home/" not in text for text in (*shown.values(), *on_gpu.values()))


def test_quality_shows_its_tone_curve_and_no_model():
    shown = rows(QUALITY, created_at="2026-12-01T09:00:00+00:00")
    assert shown["stages"] == "tone curve → NL-means → bicubic x4 (OpenCV)"
    assert shown["tone curve"].startswith("fitted on 12 pairs, made 2026-12-01 00:00:00 UTC, sha256 ")
    assert shown["NL-means strength"] == "4.5 (colour 6)" and "NL-means by brightness" in shown
    assert not {"model", "model sha256", "self-ensemble (x8)", "device"} & set(shown)
    assert shown["first enqueued"] == "2026-12-01 09:00:00 UTC"  # resumed later: both times


def test_the_cpu_stage_is_named_for_what_it_does():
    assert [cpu_stage_caption(p.to_dict()) for p in (LEARNED, STANDARD, QUALITY)] == [
        "",
        "denoised",
        "tone-mapped + denoised",
    ]
    assert [stage_label("denoise", p.to_dict()) for p in (STANDARD, QUALITY)] == ["NL-means", "tone curve + NL-means"]
    assert stage_label("upscale", LEARNED.to_dict()) == "upscale x4"


def test_the_training_start_is_a_file_name_and_a_hash():
    training = TrainingSummary(
        "file:/work/shared/weights/realesr-animevideov3.pth",
        "ea13" * 16,
        "RealESRGAN Compact",
        7028,
        5500,
        33.54,
        9000.0,
        0,
        244,
        (),
    )
    shown = dict(training_rows(report_data(LEARNED, training=training)))
    assert shown["started from"] == f"realesr-animevideov3.pth (RealESRGAN Compact), sha256 {'ea13' * 16}"
    assert shown["clean photos"].startswith("244") and shown["best held-back PSNR"] == "33.54 dB at step 5500"


def test_decibels_infinite_and_signed():
    assert [fmt_db(30.123), fmt_db(1.5, signed=True), fmt_db(-0.25, signed=True)] == [
        "30.12 dB",
        "+1.50 dB",
        "-0.25 dB",
    ]
    assert [fmt_db(float("inf")), fmt_db(float("-inf"), signed=True), fmt_db(None)] == ["∞ dB", "−∞ dB", "—"]
