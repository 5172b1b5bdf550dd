"""Holding back whole scenes of a dataset's pairs (workers/training/scenes.py)."""

from __future__ import annotations

import json

import pytest

from workers.errors import ConfigError
from workers.io.storage import LocalStorage
from workers.training.pairs import PairKeys
from workers.training.scenes import read_scenes, split_by_scene


def pairs(count: int) -> list[PairKeys]:
    return [PairKeys(f"train/train/gt_{k:05d}.png", f"train/gt/gt_{k:05d}.png") for k in range(count)]


def test_whole_scenes_are_held_back_and_never_every_scene():
    scene_of = {f"gt_{k:05d}": f"s{k % 7}" for k in range(26)}  # 26 pairs of 7 scenes
    split = split_by_scene(pairs(26), scene_of, share=0.1, most=16, least=4)
    held_scenes = {scene_of[p.name.removesuffix(".png")] for p in split.held}
    trained_scenes = {scene_of[p.name.removesuffix(".png")] for p in split.train}
    assert len(split.held) >= 4 and not held_scenes & trained_scenes and trained_scenes
    assert split.held_scenes == tuple(sorted(held_scenes)) and split.scenes == 7 and split.declared
    again = split_by_scene(pairs(26), scene_of, share=0.1, most=16, least=4)
    assert again == split  # a fixed slice: resuming sees the same split


def test_without_scenes_every_pair_is_its_own():
    split = split_by_scene(pairs(26), None, share=0.1, most=16, least=4)
    assert len(split.held) == 4 and split.scenes == 26 and not split.declared
    assert not {p.name for p in split.held} & {p.name for p in split.train}


def test_one_scene_cannot_be_split():
    split = split_by_scene(pairs(8), {f"gt_{k:05d}": "only" for k in range(8)}, share=0.25, most=16, least=4)
    assert split.held == [] and len(split.train) == 8


def test_the_scenes_file_is_read_and_checked(tmp_path):
    storage = LocalStorage(tmp_path)
    assert read_scenes(storage) is None
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "scenes.json").write_text(json.dumps({"gt_00001.png": "cat", "gt_00002": "cat"}))
    assert read_scenes(storage) == {"gt_00001": "cat", "gt_00002": "cat"}
    (tmp_path / "train" / "scenes.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected an object"):
        read_scenes(storage)
