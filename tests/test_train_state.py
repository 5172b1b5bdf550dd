"""The trainer's typed records: the saved state (and the version-1 dictionary it replaced), the provenance,
and which held-back scores let a checkpoint replace the best one."""

from __future__ import annotations

import io
import json

import pytest
import torch

from tests.helpers.paths import REPO
from workers.errors import ConfigError
from workers.io.storage import LocalStorage
from workers.training.artifacts import PROVENANCE_VERSION, Provenance
from workers.training.holdout import improves
from workers.training.state import STATE_VERSION, Phase, RunIdentity, Scores, TrainState

IDENTITY = RunIdentity("start", "pairs", {"lr": 1e-4}, {"gain": 2.49}, {"mean_quantiles": [22.0, 65.0]})


def a_state() -> TrainState:
    return TrainState(
        IDENTITY,
        step=12,
        best_step=8,
        best=Scores(30.1, 30.2, 29.0),
        start=Scores(29.5, 29.6, 29.1),
        history=[{"step": 0, "holdout_psnr": 29.5}],
        seconds=12.5,
        phase=Phase(2, 6, 3.0, False),
        model={"w": torch.ones(2)},
        ema={"w": torch.zeros(2)},
        optimizer={"state": {}, "param_groups": []},
        photos_sha256="photos",
        holdout_sha256="held",
    )


def test_the_state_round_trips_through_its_file(tmp_path):
    storage = LocalStorage(tmp_path)
    a_state().save(storage, "m.safetensors.state")
    loaded = TrainState.load(storage, "m.safetensors.state")
    assert loaded is not None and loaded.version == STATE_VERSION
    assert loaded.identity == IDENTITY and loaded.phase == Phase(2, 6, 3.0, False) and loaded.best == a_state().best
    assert torch.equal(loaded.model["w"], torch.ones(2)) and loaded.holdout_sha256 == "held"
    assert TrainState.load(storage, "absent.state") is None


def test_a_version_1_state_still_resumes():
    legacy = {
        "fingerprint": {
            "start_sha256": "start",
            "data_sha256": "old",
            "config": {"lr": 1e-4},
            "forward": {"gain": 2.49},
            "brightness": {"mean_quantiles": [22.0, 65.0]},
        },
        "model": {},
        "ema": {},
        "optimizer": {},
        "scaler": {},
        "step": 5,
        "best_psnr": 31.0,
        "best_step": 5,
        "start_psnr": 30.0,
        "history": [],
        "seconds": 4.0,
        "phase": {"number": 1, "start_step": 0, "seconds": 4.0, "ended": True},
    }
    buffer = io.BytesIO()
    torch.save(legacy, buffer)
    state = TrainState.from_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert state.version == 1 and state.step == 5 and state.best == Scores(31.0) and state.start == Scores(30.0)
    mine = RunIdentity("start", "pairs now", {"lr": 1e-4}, {"gain": 2.49}, {"mean_quantiles": [22.0, 65.0]}, "old")
    assert state.identity.same_run(mine)  # compared as version 1 hashed: pairs and photos together
    assert not state.identity.same_run(RunIdentity(*mine.to_dict().values(), "another listing"))  # type: ignore[call-arg]


def test_the_photo_listing_is_not_part_of_what_makes_a_run_the_same():
    assert "photos" not in json.dumps(IDENTITY.to_dict())
    assert IDENTITY.same_run(RunIdentity(**IDENTITY.to_dict()))
    assert not IDENTITY.same_run(RunIdentity(**{**IDENTITY.to_dict(), "pairs_sha256": "other pairs"}))
    assert not IDENTITY.same_run(RunIdentity(**{**IDENTITY.to_dict(), "config": {"lr": 2e-4}}))


def test_a_corrupt_or_newer_state_is_named(tmp_path):
    storage = LocalStorage(tmp_path)
    storage.put("x.state", b"\x00garbage")
    with pytest.raises(ConfigError, match="x.state: it is corrupt"):
        TrainState.load(storage, "x.state")
    buffer = io.BytesIO()
    torch.save({**a_state().to_dict(), "version": STATE_VERSION + 1}, buffer)
    storage.put("new.state", buffer.getvalue())
    with pytest.raises(ConfigError, match="newer"):
        TrainState.load(storage, "new.state")


def test_a_provenance_written_by_this_version_reads_back_and_the_shipped_ones_read():
    shipped = json.loads((REPO / "models" / "lowlight-compact.json").read_text())
    record = Provenance.from_dict(shipped)
    assert record.version == 2 and record.extra["shipping"]["name"] == "lowlight-compact"
    current = Provenance.from_dict(
        {
            **record.to_dict(),
            "version": PROVENANCE_VERSION,
            "selection": {"best_is": "trained"},
            "bf16_agreement": {"sha256": "x"},
        }
    )
    again = Provenance.from_dict(json.loads(current.to_json()))
    assert again == current and again.version == PROVENANCE_VERSION and again.to_dict()["shipping"]
    with pytest.raises(ConfigError, match="not a lowlight-sr training provenance"):
        Provenance.from_dict({"kind": "something else"})


S = Scores
# candidate, best so far, start, pairs decide -> replaces the best
IMPROVES = [
    (S(30.2, 30.2, 29.0), S(30.1, 30.1, 29.0), S(30.1, 30.1, 29.0), True, True),  # higher, photos held
    (S(30.2, 30.2, 28.9), S(30.1, 30.1, 29.0), S(30.1, 30.1, 29.0), True, False),  # higher on pairs, loses on photos
    (S(30.1, 30.1, 29.5), S(30.1, 30.1, 29.0), S(30.1, 30.1, 29.0), True, False),  # only equal on pairs
    (S(30.2, 30.2, None), S(30.1, 30.1, None), S(30.1, 30.1, None), True, True),  # no photos held back
    (S(29.0, None, 29.0), S(28.9, None, 28.9), S(28.0, None, 28.0), False, True),  # photos alone select
    (S(29.5, 30.0, 28.5), S(29.4, 29.0, 29.8), S(29.4, 29.0, 29.8), False, True),  # too few pairs: all items select
    (S(), S(), S(), False, True),  # nothing held back: the latest is the best
    (S(30.0, 30.0, 29.0), S(), S(), True, True),  # nothing scored yet
]


@pytest.mark.parametrize(("candidate", "best", "start", "pairs_decide", "replaces"), IMPROVES)
def test_which_checkpoint_replaces_the_best(candidate, best, start, pairs_decide, replaces):
    assert improves(candidate, best, start, pairs_decide) is replaces
