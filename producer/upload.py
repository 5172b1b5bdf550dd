"""Copy a local folder into object storage: how inputs and datasets get into the bucket."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from workers.errors import ConfigError
from workers.io.storage import Storage


def local_files(folder: Path) -> list[str]:
    """Every regular, non-hidden file under ``folder`` (symlinks followed), as sorted ``/`` keys."""
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a directory")
    keys = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            keys.append(relative.as_posix())
    return sorted(keys)


def upload_folder(folder: Path, destination: Storage, show_progress: bool = False) -> int:
    """Put every file of ``folder`` under ``destination`` at its relative path, replacing what is
    there (a file changed since the last upload is never left stale); returns how many.

    Raises:
        ConfigError: ``folder`` is not a directory or holds no files; the store refuses the credentials.
        TransientError: the store could not be reached.
    """
    keys = local_files(folder)
    if not keys:
        raise ConfigError(f"{str(folder)!r} holds no files")
    for key in tqdm(keys, desc="upload", unit="file", disable=not show_progress):
        destination.put(key, (folder / key).read_bytes())
    return len(keys)
