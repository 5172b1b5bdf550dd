"""Find the upscaler's checkpoint: a local file, or a file on the Hugging Face Hub.

The Hub download goes through ``huggingface_hub`` into the normal HF cache (``HF_HOME`` /
``HF_HUB_CACHE``), so it happens once per machine or shared volume, and ``HF_HUB_OFFLINE=1`` uses the
cached copy without touching the network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workers.errors import ObjectNotFoundError, TransientError, UnsupportedModelError, WeightsUnavailableError
from workers.io.storage import Storage
from workers.settings import Settings

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint:"  # checkpoint:<sha256>.<ext>: a checkpoint in the run store, by hash
CHECKPOINTS_FOLDER = "checkpoints"  # where the run store keeps them: checkpoints/<sha256>.<ext>
TORCHSCRIPT_SUFFIX = ".pt"  # what spandrel loads with torch.jit.load


def check_not_torchscript(ref: str, settings: Settings) -> str:
    """``ref`` unless it names a TorchScript file (``.pt``: loading one runs code it carries) and
    ALLOW_TORCHSCRIPT is off.

    Raises:
        UnsupportedModelError: it does.
    """
    name = PurePosixPath(ref.partition("@")[0] if ref.startswith("hf:") else ref).name
    if name.lower().endswith(TORCHSCRIPT_SUFFIX) and not settings.allow_torchscript:
        raise UnsupportedModelError(f"{ref!r} is TorchScript (.pt), whose loading runs code from the file: refused "
                                    "unless ALLOW_TORCHSCRIPT is set; convert it to .safetensors or .pth")
    return ref


def model_cache_dir(settings: Settings) -> Path:
    """Where this process keeps checkpoints fetched by hash (MODEL_CACHE_DIR)."""
    return Path(settings.model_cache_dir or Path.home() / ".cache" / "lowlight-sr" / "models").expanduser()


def stored_checkpoint(ref: str) -> tuple[str, str]:
    """(run store key, sha256) of a ``checkpoint:<sha256>.<ext>`` reference."""
    name = ref.removeprefix(CHECKPOINT_PREFIX)
    return f"{CHECKPOINTS_FOLDER}/{name}", name.partition(".")[0]


@dataclass(frozen=True)
class WeightsRef:
    """Where the weights come from, as recorded in run reports."""

    path: Path
    source: str  # "file:<path>" or "hf:<repo>/<file>@<revision>"


def resolve_weights(settings: Settings) -> WeightsRef:
    """Return a local path to the checkpoint the settings name, downloading it if needed.

    Raises:
        WeightsUnavailableError: the local file is missing, or the Hub file is neither cached nor
            downloadable; the message says which variable / flag to set.
    """
    source = describe_weights(settings)
    check_not_torchscript(settings.weights or settings.model_file, settings)
    if settings.weights:
        path = Path(settings.weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"WEIGHTS={settings.weights!r} (flag --weights) is not a file")
        return WeightsRef(path.resolve(), source)
    return _from_hub(settings.model_repo, settings.model_file, settings.model_revision, source)


def resolve_checkpoint(ref: str, settings: Settings, flag: str = "--from (TRAIN_FROM)") -> WeightsRef:
    """A local file for ``ref``: a path, or ``hf:repo/path/file@revision`` (downloaded into the HF
    cache, unless a file of that name is in WEIGHTS_DIR, which is then used with no network).

    Raises:
        WeightsUnavailableError: the path is not a file, or the Hub file is neither local nor
            downloadable; the message names ``flag``.
    """
    check_not_torchscript(ref, settings)
    if not ref.startswith("hf:"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{flag}: {ref!r} is not a file")
        return WeightsRef(path.resolve(), f"file:{path.resolve()}")
    repo, filename, revision = parse_hub_ref(ref)
    local = Path(settings.weights_dir).expanduser() / PurePosixPath(filename).name
    if local.is_file():
        logger.info("%s: using the local copy %s", ref, local)
        return WeightsRef(local.resolve(), f"file:{local.resolve()}")
    try:
        return _from_hub(repo, filename, revision, ref)
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(f"{exc} Or set {flag} to a local checkpoint, or put {PurePosixPath(filename).name} "
                                      f"in WEIGHTS_DIR ({settings.weights_dir}).") from None


def parse_hub_ref(ref: str) -> tuple[str, str, str]:
    """``hf:owner/repo/path/file.pth@rev`` -> (``owner/repo``, ``path/file.pth``, ``rev``; default ``main``).

    Raises:
        WeightsUnavailableError: not of that form.
    """
    body, _, revision = ref.removeprefix("hf:").partition("@")
    parts = body.split("/")
    if len(parts) < 3 or not all(parts):
        raise WeightsUnavailableError(f"{ref!r} is not hf:owner/repo/file[@revision]")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or "main"


def describe_weights(settings: Settings) -> str:
    """The weights the settings name, without fetching them: ``file:<path>`` or ``hf:<repo>/<file>@<rev>``."""
    if settings.weights:
        return f"file:{Path(settings.weights).expanduser().resolve()}"
    return f"hf:{settings.model_repo}/{settings.model_file}@{settings.model_revision}"


def _from_hub(repo: str, filename: str, revision: str, source: str) -> WeightsRef:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(repo_id=repo, filename=filename, revision=revision)
    except LocalEntryNotFoundError:
        why = "it is not in the HF cache (HF_HOME) and the Hub cannot be reached (no network, or HF_HUB_OFFLINE=1)"
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        why = f"{first_line} (check MODEL_REPO, MODEL_FILE and MODEL_REVISION; HF_TOKEN for a private repo)"
    else:
        logger.info("weights %s -> %s", source, path)
        return WeightsRef(Path(path), source)
    raise WeightsUnavailableError(
        f"cannot get {filename}@{revision} from the Hugging Face Hub repo {repo}: {why}. Set WEIGHTS=/path/to/model.pth "
        "(flag --weights) to use a local checkpoint, or fill the HF cache where this runs."
    )


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed (checkpoints are tens of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_checkpoint(storage: Storage, key: str, sha256: str, cache_dir: Path) -> Path:
    """A local copy of the checkpoint at ``key`` in ``storage`` whose content has ``sha256``.

    Copies are kept in ``cache_dir`` by hash, so a worker downloads each trained model once; a
    cached copy is re-checked before use.

    Raises:
        TransientError: the object is missing, unreachable, or does not have that hash (a worker
            must never run another model than the run names).
    """
    path = cache_dir / f"{sha256}{PurePosixPath(key).suffix}"
    if path.is_file() and file_sha256(path) == sha256:
        return path
    try:
        data = storage.get(key)
    except ObjectNotFoundError:
        raise TransientError(f"the run's checkpoint {storage.url(key)} is missing from the store") from None
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise TransientError(f"the run's checkpoint {storage.url(key)} has sha256 {found[:12]}..., "
                             f"the run expects {sha256[:12]}...: refusing to run another model")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=cache_dir)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path
