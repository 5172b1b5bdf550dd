"""workers.ops.opencv_lab against OpenCV itself: both 8-bit Lab conversions and their round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from workers.ops.opencv_lab import lab_to_rgb_u8, rgb_to_lab_u8


@pytest.mark.parametrize(
    ("ours", "opencv"),
    [
        (rgb_to_lab_u8, lambda rgb: cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), cv2.COLOR_LBGR2Lab)),
        (lab_to_rgb_u8, lambda lab: cv2.cvtColor(cv2.cvtColor(lab, cv2.COLOR_Lab2LBGR), cv2.COLOR_BGR2RGB)),
    ],
    ids=["rgb-to-lab", "lab-to-rgb"],
)
def test_each_conversion_matches_opencv_bit_for_bit(ours, opencv):
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    pixels[0, :4] = [[0, 0, 0], [255, 255, 255], [4, 55, 4], [0, 0, 255]]  # (4, 55, 4): RGB -> Lab's cbrt quirk
    assert np.array_equal(ours(torch.from_numpy(pixels)).numpy(), opencv(pixels))


def test_lab_round_trip_error_is_opencvs():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ref = cv2.cvtColor(cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_LBGR2Lab), cv2.COLOR_Lab2LBGR), cv2.COLOR_BGR2RGB)
    ours = lab_to_rgb_u8(rgb_to_lab_u8(torch.from_numpy(rgb))).numpy()
    ours_error = np.abs(ours.astype(int) - rgb)
    ref_error = np.abs(ref.astype(int) - rgb)
    assert ours_error.max() <= ref_error.max() <= 6  # 8-bit Lab is lossy; OpenCV's round trip stays within a few levels
    assert abs(ours_error.mean() - ref_error.mean()) < 0.01
