"""Turn the SRC argument into a listing of input images.

SRC is a local directory or ``s3://bucket/prefix``. A competition dataset root (one holding
``test/`` and ``sample_submission.csv``) is recognised and its ``test/`` split is processed.
Every regular, non-hidden file is an input: a non-image gets its own clear failure rather than
vanishing silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workers.errors import ConfigError, InvalidKeyError
from workers.runs import check_name
from workers.storage import Storage, StorageFactory, join_key, parse_s3_url, storage_url_for

SAMPLE_SUBMISSION = "sample_submission.csv"
TEST_SPLIT = "test"


@dataclass(frozen=True)
class Source:
    storage: Storage  # the folder holding the inputs
    url: str  # how workers open it (recorded in the manifest)
    label: str  # a readable name for run ids
    names: tuple[str, ...]  # accepted input names, sorted: the submission order
    rejected: tuple[tuple[str, str], ...]  # (name, reason) refused at listing
    sample_submission: Storage | None = None  # the store holding sample_submission.csv, if any

    @property
    def is_local(self) -> bool:
        return self.url.startswith("file://")


def resolve_source(src: str, storages: StorageFactory) -> Source:
    """List the inputs ``src`` names.

    Raises:
        ConfigError: ``src`` does not exist or holds no files.
    """
    if src.startswith("s3://"):
        bucket, prefix = parse_s3_url(src)
        root = storages.open(src)
        keys = list(root.list(""))
        has_split = any(k.startswith(TEST_SPLIT + "/") for k in keys)
        has_sample = SAMPLE_SUBMISSION in keys
        folder_prefix = join_key(prefix, TEST_SPLIT) if has_split else prefix
        folder = storages.open(f"s3://{bucket}/{folder_prefix}") if has_split else root
        url = f"s3://{bucket}/{folder_prefix}".rstrip("/")
        label = PurePosixPath(prefix).name or bucket
        sample = root if has_sample else None
    else:
        path = Path(src).expanduser()
        if not path.is_dir():
            raise ConfigError(f"source {src!r} is not a directory or s3://bucket/prefix URL")
        has_split = (path / TEST_SPLIT).is_dir()
        sample = storages.open(str(path)) if (path / SAMPLE_SUBMISSION).is_file() else None
        folder_path = path / TEST_SPLIT if has_split else path
        folder = storages.open(str(folder_path))
        url = storage_url_for(folder_path)
        label = path.resolve().name
    names, rejected = _accept(k for k in folder.list("") if "/" not in k)
    if not names and not rejected:
        raise ConfigError(f"source {src!r} holds no files")
    return Source(folder, url, label, names, rejected, sample)


def _accept(keys) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:  # noqa: ANN001
    names: list[str] = []
    rejected: list[tuple[str, str]] = []
    seen_stems: dict[str, str] = {}
    for key in sorted(keys):
        if key.startswith(".") or key == SAMPLE_SUBMISSION:
            continue
        try:
            check_name(key)
        except InvalidKeyError as exc:
            rejected.append((key, str(exc)))
            continue
        stem = PurePosixPath(key).stem
        if stem in seen_stems:
            rejected.append((key, f"same output name as {seen_stems[stem]!r} (outputs are named by file stem)"))
            continue
        seen_stems[stem] = key
        names.append(key)
    return tuple(names), tuple(rejected)
