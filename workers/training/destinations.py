"""What a calibrate or train task may do: a message can be crafted by anyone with the broker's
password, so a task writes, and starts from, only what its own dataset and the configuration allow.
``producer calibrate -o`` and ``producer train -o`` in process write where their user says; these
rules are for the tasks, checked before anything is read or written.

* **The dataset** must be inside the run store (STORAGE_URL): a message cannot point a worker at
  its own disk (a dataset ``/``) or at a bucket the deployment does not own.
* **Destinations** are the dataset's standard files (``trained_x4.safetensors``, ``calibration.json``
  directly in it), or a location under one of TASK_OUTPUTS: a job on one dataset never replaces
  another dataset's model or calibration (which that dataset's runs would then use), and never run
  state (``runs/``).
* **The start checkpoint** is a shipped model (``shipped:NAME``, hash-checked by the registry), a
  checkpoint in the run store by its sha256 (``checkpoint:<sha256>.<ext>``, what ``producer train
  --from FILE`` publishes; fetched and checked by hash), or one listed in TRAIN_SOURCES.
* **TorchScript** (``.pt``: spandrel loads it with ``torch.jit.load``, which runs code from the file)
  is refused unless ALLOW_TORCHSCRIPT is set (:func:`workers.io.weights.check_not_torchscript`).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from workers.errors import ConfigError
from workers.io.storage import is_local, local_path, scheme_of
from workers.io.weights import CHECKPOINT_PREFIX, check_not_torchscript
from workers.settings import Settings

RUN_STATE = "runs"  # runs/<run>/: manifests, rows, outputs, summaries (workers.run.keys)
SHIPPED_PREFIX = "shipped:"  # --from shipped:NAME starts from a registered model
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}[0-9a-f]{{64}}\.(safetensors|pth|pt)$")


def check_task_dataset(dataset: str, settings: Settings) -> str:
    """``dataset`` if it lies inside the run store (STORAGE_URL).

    Raises:
        ConfigError: it does not; the message names both.
    """
    root = settings.storage_url
    if scheme_of(dataset) != scheme_of(root) or not _inside(dataset, root):
        raise ConfigError(f"refusing a task on {dataset!r}: a task's dataset must be inside the run store "
                          f"(STORAGE_URL {root!r})")
    return dataset


def check_task_output(location: str, dataset: str, standard_name: str, settings: Settings) -> str:
    """``location`` if a task on ``dataset`` may write its artifact there: ``dataset/standard_name``,
    or under one of TASK_OUTPUTS; never under a ``runs`` folder or with ``.``, ``..`` or empty segments.

    Raises:
        ConfigError: anywhere else; the message names the location and the rule.
    """
    suffix = PurePosixPath(standard_name).suffix
    if not PurePosixPath(location).name.endswith(suffix):
        raise ConfigError(f"refusing to write {location!r}: a task's output must be a {suffix} file")
    segments = _segments(location)
    if any(segment in ("", ".", "..") for segment in segments):
        raise ConfigError(f"refusing to write {location!r}: empty, '.' or '..' path segments")
    if RUN_STATE in segments:
        raise ConfigError(f"refusing to write {location!r}: it is under {RUN_STATE}/, where runs keep their state")
    standard = f"{dataset.rstrip('/')}/{standard_name}"
    if _same(location, standard) or any(_inside(location, allowed) for allowed in _listed(settings.task_outputs)):
        return location
    raise ConfigError(f"refusing to write {location!r}: a task on {dataset!r} writes only {standard!r} "
                      "(or under a folder listed in TASK_OUTPUTS)")


def check_task_start(start: str | None, settings: Settings) -> str | None:
    """``start`` if a train task may start from it: None (the shipped default), ``shipped:NAME``,
    ``checkpoint:<sha256>.<ext>`` (the run store's, by hash), or a reference listed in TRAIN_SOURCES.

    Raises:
        ConfigError: any other reference, or TorchScript without ALLOW_TORCHSCRIPT.
    """
    if start is None or start.startswith(SHIPPED_PREFIX):
        return start
    check_not_torchscript(start, settings)
    if _CHECKPOINT.match(start) or start in _listed(settings.train_sources):
        return start
    raise ConfigError(f"refusing to start training from {start!r}: a train task starts from a shipped model "
                      f"(shipped:NAME), a run store checkpoint by hash ({CHECKPOINT_PREFIX}<sha256>.<ext>), or a "
                      "source listed in TRAIN_SOURCES")


def _listed(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _normal(location: str) -> tuple[str, str, tuple[str, ...]]:
    """(scheme, bucket or '', path parts) of a location: a local path resolved (symlinks followed)."""
    if is_local(location):
        return "file", "", local_path(location).resolve().parts
    parsed = urlsplit(location)
    return scheme_of(location), parsed.netloc, tuple(p for p in unquote(parsed.path).split("/") if p)


def _inside(location: str, folder: str) -> bool:
    scheme, bucket, parts = _normal(location)
    f_scheme, f_bucket, f_parts = _normal(folder)
    return (scheme, bucket) == (f_scheme, f_bucket) and parts[: len(f_parts)] == f_parts


def _same(a: str, b: str) -> bool:
    return _normal(a) == _normal(b)


def _segments(location: str) -> list[str]:
    """The path segments the rules read, as written: an object store URL's key, a local path's parts."""
    path = unquote(urlsplit(location).path) if not is_local(location) else str(local_path(location))
    return path.removeprefix("/").split("/")
