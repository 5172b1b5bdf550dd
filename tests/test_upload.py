"""`producer upload`: a local folder into a store, sub-folders kept, hidden files left out."""

import pytest

from producer.upload import upload_folder
from workers.errors import ConfigError
from workers.io.storage import LocalStorage


def test_every_file_goes_to_its_relative_key_and_a_changed_one_replaces_the_stored_copy(tmp_path):
    source = tmp_path / "dataset"
    (source / "test").mkdir(parents=True)
    (source / "test" / "test_00001.png").write_bytes(b"one")
    (source / "sample_submission.csv").write_bytes(b"ID\n")
    (source / ".DS_Store").write_bytes(b"junk")
    store = LocalStorage(tmp_path / "bucket")
    assert upload_folder(source, store) == 2
    assert sorted(store.list("")) == ["sample_submission.csv", "test/test_00001.png"]
    (source / "test" / "test_00001.png").write_bytes(b"changed")
    upload_folder(source, store)
    assert store.get("test/test_00001.png") == b"changed"


def test_a_missing_or_empty_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        upload_folder(tmp_path / "nope", LocalStorage(tmp_path / "bucket"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no files"):
        upload_folder(tmp_path / "empty", LocalStorage(tmp_path / "bucket"))
