"""Which training pairs are cut from the same picture, and holding back whole pictures.

A small dataset is often a few photos cut into several pairs each (the sample: 42 pairs of 7). Held-back
pairs that are crops of pictures the model trains on reward memorising those pictures, not learning
the data: a fine-tune then "wins" on its held-back set and loses on new pictures. So pairs are held back
by *scene*: every pair of a held-back scene, none of a trained one.

A dataset says which pair comes from which picture in ``train/scenes.json`` (``{"gt_00001": "cat",
...}``; names with or without ``.png``). Without it every pair is its own scene (as in the competition,
whose pairs are distinct photos), and the held-back photos (:mod:`workers.training.holdout`) are what
catches a fine-tune drifting off.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.storage import Storage
from workers.training.pairs import PairKeys

logger = logging.getLogger(__name__)

SCENES_FILE = "train/scenes.json"


def read_scenes(dataset: Storage) -> dict[str, str] | None:
    """The dataset's ``train/scenes.json`` (pair stem -> scene), or None when it has none.

    Raises:
        ConfigError: the file is not a JSON object of names to scene names.
    """
    try:
        raw = dataset.get(SCENES_FILE)
    except ObjectNotFoundError:
        return None
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{dataset.url(SCENES_FILE)}: not JSON ({exc})") from None
    if not isinstance(document, dict) or not all(isinstance(v, str) for v in document.values()):
        raise ConfigError(f"{dataset.url(SCENES_FILE)}: expected an object of pair names to scene names")
    return {str(name).removesuffix(".png"): scene for name, scene in document.items()}


@dataclass(frozen=True)
class SceneSplit:
    train: list[PairKeys]
    held: list[PairKeys]
    scenes: int  # scenes in all
    held_scenes: tuple[str, ...]
    declared: bool  # the dataset said which pair is which scene


def split_by_scene(
    pairs: Sequence[PairKeys], scene_of: dict[str, str] | None, share: float, most: int, least: int
) -> SceneSplit:
    """(training, held back) pairs, whole scenes at a time, chosen by hashing the scene names (a fixed slice).

    Scenes are held back until at least ``share`` of the pairs are (and ``least``, when four times as
    many pairs exist), at most ``most`` pairs unless one scene alone is larger, and never every scene:
    at least half the pairs stay to train on. A pair ``scene_of`` does not name is a scene of its own.
    """
    declared = scene_of is not None
    scene_of = scene_of or {}
    scene = {p.name: scene_of.get(p.name.removesuffix(".png"), p.name) for p in pairs}
    by_scene: dict[str, list[PairKeys]] = {}
    for pair in pairs:
        by_scene.setdefault(scene[pair.name], []).append(pair)
    if len(pairs) < 2 or share <= 0 or len(by_scene) < 2:
        return SceneSplit(list(pairs), [], len(by_scene), (), declared)
    want = max(1, min(most, round(share * len(pairs))))
    if len(pairs) >= 4 * least:
        want = max(want, least)
    held_names: list[str] = []
    held_count = 0
    for name in sorted(by_scene, key=lambda s: hashlib.sha1(s.encode()).hexdigest()):
        if held_count >= want:
            break
        size = len(by_scene[name])
        if held_count and held_count + size > most:
            continue
        if held_count + size > len(pairs) / 2 or len(held_names) + 1 == len(by_scene):
            continue
        held_names.append(name)
        held_count += size
    held = {p.name for name in held_names for p in by_scene[name]}
    return SceneSplit(
        [p for p in pairs if p.name not in held],
        [p for p in pairs if p.name in held],
        len(by_scene),
        tuple(sorted(held_names)),
        declared,
    )
