"""Turn the SRC argument into a listing of input images.

SRC is a local directory or ``s3://bucket/prefix`` (any backend :mod:`workers.io.storage` knows). A competition dataset root (one holding
``test/`` and ``sample_submission.csv``) is recognised and its ``test/`` split is processed.
Every regular, non-hidden file is an input: a non-image gets its own clear failure rather than
vanishing silently, and so does a symlink that dangles or loops (one to a file outside the folder is
followed: it is the user's own input), and a name no backend can hold (not UTF-8, or too long once the run's
suffixes are added: :func:`workers.run.keys.check_fits`). Two names with one submission ID are a
dataset error: the enqueue is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from workers.errors import ConfigError, InvalidKeyError
from workers.io.storage import LocalStorage, Storage, StorageFactory, is_local
from workers.io.submission import submission_id
from workers.run.keys import check_fits, check_name, display_name

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


def resolve_source(src: str, storages: StorageFactory, store_prefix: str = "") -> Source:
    """List the inputs ``src`` names: a folder or a dataset root, on any storage backend.

    ``store_prefix`` is the run store's own key prefix (``s3://bucket/PREFIX``): it counts towards
    the length of every key a name must fit in.

    Raises:
        ConfigError: ``src`` does not exist, names an unknown backend, or holds no files; two inputs
            have the same submission ID.
    """
    root = storages.open_source(src)
    if isinstance(root, LocalStorage) and not root.root.is_dir():
        raise ConfigError(f"source {src!r} is not a directory or s3://bucket/prefix URL")
    has_split = next(iter(root.list(TEST_SPLIT)), None) is not None
    folder = storages.open_source(f"{root.root_url}/{TEST_SPLIT}") if has_split else root
    sample = root if root.exists(SAMPLE_SUBMISSION) else None
    unreadable = folder.unreadable_reason if isinstance(folder, LocalStorage) else lambda _: None
    names, rejected = _accept((k for k in folder.list("") if "/" not in k), store_prefix, unreadable)
    if not names and not rejected:
        raise ConfigError(f"source {src!r} holds no files")
    return Source(folder, folder.root_url, _label(root.root_url), names, rejected, sample)


def _label(url: str) -> str:
    """A readable name for run ids: the folder's name, or the bucket's for a bucket root."""
    parsed = urlsplit(url)
    return PurePosixPath(unquote(parsed.path)).name or parsed.netloc


def _accept(keys: Iterable[str], store_prefix: str, unreadable: Callable[[str], str | None]
            ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(accepted names, (name, reason) of the refused ones); refused names are recorded as shown.
    ``unreadable(name)`` says why an entry holds no file to read (a broken symlink), or None.

    Raises:
        ConfigError: two accepted names have one submission ID (``test_1.png`` and ``gt_1.png``).
    """
    names: list[str] = []
    rejected: list[tuple[str, str]] = []
    seen_stems: dict[str, str] = {}
    seen_ids: dict[str, str] = {}
    for key in sorted(keys):
        if key.startswith(".") or key == SAMPLE_SUBMISSION:
            continue
        try:
            check_fits(check_name(key), store_prefix)
        except InvalidKeyError as exc:
            rejected.append((display_name(key), str(exc)))
            continue
        problem = unreadable(key)
        if problem is not None:
            rejected.append((key, problem))
            continue
        stem = PurePosixPath(key).stem
        if stem in seen_stems:
            rejected.append((key, f"same output name as {seen_stems[stem]!r} (outputs are named by file stem)"))
            continue
        image_id = submission_id(key)
        if image_id in seen_ids:
            raise ConfigError(f"{seen_ids[image_id]!r} and {key!r} both have submission ID {image_id!r} (test_ and "
                              "val_ become gt_): the submission would have two rows for it; rename or remove one")
        seen_stems[stem] = key
        seen_ids[image_id] = key
        names.append(key)
    return tuple(names), tuple(rejected)
