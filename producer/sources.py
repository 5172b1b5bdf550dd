"""Turn the SRC argument into a listing of input images.

SRC is a local directory or ``s3://bucket/prefix`` (any backend :mod:`workers.io.storage` knows). A competition dataset root (one holding
``test/`` and ``sample_submission.csv``) is recognised and its ``test/`` split is processed.
Every regular, non-hidden file is an input: a non-image gets its own clear failure rather than
vanishing silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from workers.errors import ConfigError, InvalidKeyError
from workers.io.storage import LocalStorage, Storage, StorageFactory, is_local
from workers.run.keys import check_name

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
        return is_local(self.url)


def resolve_source(src: str, storages: StorageFactory) -> Source:
    """List the inputs ``src`` names: a folder or a dataset root, on any storage backend.

    Raises:
        ConfigError: ``src`` does not exist, names an unknown backend, or holds no files.
    """
    root = storages.open(src)
    if isinstance(root, LocalStorage) and not root.root.is_dir():
        raise ConfigError(f"source {src!r} is not a directory or s3://bucket/prefix URL")
    has_split = next(iter(root.list(TEST_SPLIT)), None) is not None
    folder = storages.open(f"{root.root_url}/{TEST_SPLIT}") if has_split else root
    sample = root if root.exists(SAMPLE_SUBMISSION) else None
    names, rejected = _accept(k for k in folder.list("") if "/" not in k)
    if not names and not rejected:
        raise ConfigError(f"source {src!r} holds no files")
    return Source(folder, folder.root_url, _label(root.root_url), names, rejected, sample)


def _label(url: str) -> str:
    """A readable name for run ids: the folder's name, or the bucket's for a bucket root."""
    parsed = urlsplit(url)
    return PurePosixPath(unquote(parsed.path)).name or parsed.netloc


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
