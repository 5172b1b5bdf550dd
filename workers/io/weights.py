"""Find the upscaler's checkpoint: a local file, or a file on the Hugging Face Hub.

The Hub download goes through ``huggingface_hub`` into the normal HF cache (``HF_HOME`` /
``HF_HUB_CACHE``), so it happens once per machine or shared volume, and ``HF_HUB_OFFLINE=1`` uses the
cached copy without touching the network.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from workers.errors import WeightsUnavailableError
from workers.settings import Settings

logger = logging.getLogger(__name__)


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
    if settings.weights:
        path = Path(settings.weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"WEIGHTS={settings.weights!r} (flag --weights) is not a file")
        return WeightsRef(path.resolve(), source)
    return _from_hub(settings.model_repo, settings.model_file, settings.model_revision, source)


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
