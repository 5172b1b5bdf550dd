"""What the project stores as JSON reads back as written: the run manifest, the attempts records and
the training job marker (its own tests: tests/test_job.py), each a typed record with a version."""

from __future__ import annotations

import json

import pytest

from workers.errors import ConfigError
from workers.ops.denoise import DenoiseSpec
from workers.run.attempts import Attempts
from workers.run.manifest import PipelineSpec, RunManifest


def a_manifest(**changes) -> RunManifest:
    fields = dict(
        run_id="r1",
        source="file:///data/test",
        names=("test_1.png", "test_2.png"),
        pipeline=PipelineSpec(preset="quality", upscaler="bicubic", denoise=DenoiseSpec("nlm", h=9)),
        model="bicubic",
        expected_columns=40,
        rejected=(("notes.txt", "not a recognised image"),),
        created_at="2026-12-07T10:00:00.000+00:00",
        fingerprints={"test_1.png": "10:sha256:ab"},
        expected_ids=("gt_1", "gt_2"),
    )
    return RunManifest(**{**fields, **changes})


@pytest.mark.parametrize("manifest", [a_manifest(), a_manifest(expected_ids=None, expected_columns=None, rejected=())])
def test_a_manifest_written_by_this_version_reads_back(manifest):
    assert RunManifest.from_json(manifest.to_json()) == manifest
    assert RunManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def test_a_manifest_of_another_version_or_with_unknown_fields_is_refused():
    data = a_manifest().to_dict()
    with pytest.raises(ConfigError, match="version 2"):
        RunManifest.from_dict({**data, "version": 2})
    with pytest.raises(ConfigError, match="unknown fields"):
        RunManifest.from_dict({**data, "epoch": "x"})


def test_an_attempts_record_reads_back_and_one_written_before_versions_reads_as_version_1():
    record = Attempts(
        "a.png",
        "upscale",
        deaths=2,
        errors=1,
        alone=True,
        last_worker="gpu@host-2",
        last_error="ValueError: x",
        at="2026-12-07T10:00:00.000+00:00",
    )
    assert Attempts.from_json(record.to_json()) == record
    older = {k: v for k, v in record.to_dict().items() if k != "version"}
    assert Attempts.from_dict(older) == record
    with pytest.raises(ConfigError, match="newer"):
        Attempts.from_dict({**record.to_dict(), "version": 2})
