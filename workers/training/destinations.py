"""Where a task may store what it makes. ``producer calibrate -o`` and ``producer train -o`` write
where their user says; a task writes where its message says, and a message can be crafted: the
calibrate and train tasks check their destinations here, before anything is read or written."""

from __future__ import annotations

from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from workers.errors import ConfigError
from workers.io.storage import is_local, local_path

RUN_STATE = "runs"  # runs/<run>/: manifests, rows, outputs, summaries (workers.run.keys)


def check_task_output(location: str, dataset: str, suffix: str) -> str:
    """``location`` if a task that works on ``dataset`` may write its artifact there.

    Refused: a name not ending in ``suffix`` (``.json`` for a calibration, ``.safetensors`` for a
    model); a location under a ``runs`` folder (run state) or with ``.``, ``..`` or empty segments; a
    local path outside ``dataset``'s folder, or any local path for a dataset that is not local (a
    worker's own disk is no place for either).

    Raises:
        ConfigError: one of the above; the message names the location and the rule.
    """
    if not PurePosixPath(location).name.endswith(suffix):
        raise ConfigError(f"refusing to write {location!r}: a task's output must be a {suffix} file")
    segments = _segments(location, dataset)
    if any(segment in ("", ".", "..") for segment in segments):
        raise ConfigError(f"refusing to write {location!r}: empty, '.' or '..' path segments")
    if RUN_STATE in segments:
        raise ConfigError(f"refusing to write {location!r}: it is under {RUN_STATE}/, where runs keep their state")
    return location


def _segments(location: str, dataset: str) -> list[str]:
    """The path segments that must pass the rules: a local path's within the dataset (symlinks
    resolved), an object store URL's key.

    Raises:
        ConfigError: a local path outside the dataset, or for a dataset that is not local.
    """
    if not is_local(location):
        return unquote(urlsplit(location).path).removeprefix("/").split("/")
    if not is_local(dataset):
        raise ConfigError(f"refusing to write {location!r}: a task on a dataset in object storage writes there, "
                          "not on a worker's disk")
    root, path = local_path(dataset).resolve(), local_path(location)
    if ".." in path.parts or not path.resolve().is_relative_to(root):
        raise ConfigError(f"refusing to write {location!r}: a task writes local files inside its dataset {root} only")
    return list(path.resolve().relative_to(root).parts)
